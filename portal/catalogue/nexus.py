"""Reading a dataset's metadata from its NeXus file: untrusted input, read at arm's length.

A data file is written by whoever ran the experiment, and HDF5 can make a file read
*other* files: external storage for a field, external links, virtual datasets. Read by
the hub (root on a Docker host), a ``title`` stored externally in ``/etc/shadow`` or the
hub's own crypt key would be copied into the catalogue and shown on every page. So:

- Only hard links are followed, inside the file; a field stored externally or virtually,
  or larger than :data:`MAX_ELEMENTS`, is refused, and the file skipped.
- The reading happens in a forked worker (:class:`MetadataReader`) that drops to an
  unprivileged uid when the hub is root, under memory, CPU, file-size and open-file
  limits, and gets each file as an already open descriptor. It never sees a path it
  could swap, and any file it might still open is opened as nobody.
- The parent waits :attr:`MetadataReader.timeout` seconds per file; a worker that does
  not answer is killed and replaced, and that file skipped.
- What comes back is text for people: control characters removed, at most
  :data:`MAX_TEXT` characters per field.

Forking (not spawning a new interpreter) keeps the worker on the parent's already loaded
Python, which an unprivileged uid may not be allowed to execute. The indexer runs before
the hub starts its threads (``panosc-portal serve``, ``catalogue index``), so the fork is
of a single-threaded process.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import h5py

MAX_ELEMENTS = 4096  # a metadata field is a short string, not an array of millions
MAX_TEXT = 500
NOBODY = 65534
MEMORY = 1 << 30  # address space of the worker, in bytes
CPU_SECONDS = 600  # CPU time of one worker, across the files it reads


class Refused(OSError):
    """The file asks to be read in a way the portal refuses (external data, links out)."""


def clean_text(value: object) -> str:
    """A field or attribute as plain text for people: decoded, printable, bounded."""
    if hasattr(value, "shape") and getattr(value, "shape", None) not in (None, ()):
        value = value.flat[0] if value.size else ""  # type: ignore[attr-defined]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in str(value))
    return " ".join(text.split())[:MAX_TEXT]


def child(group: h5py.Group, name: str) -> h5py.Group | h5py.Dataset | None:
    """``group[name]`` if it is a hard link of this file; never a link that leaves it."""
    if not name or "/" in name or name in (".", ".."):
        return None
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise Refused(f"{group.name}/{name} is a {type(link).__name__}; only hard links are read")
    return group[name]


def field(group: h5py.Group, name: str) -> str | None:
    """A small scalar field of ``group`` as text, refusing external and virtual storage."""
    item = child(group, name)
    if not isinstance(item, h5py.Dataset):
        return None
    if item.is_virtual or item.external:
        raise Refused(f"{item.name} is stored outside the file; refusing to read it")
    if item.size > MAX_ELEMENTS:
        raise Refused(f"{item.name} holds {item.size} elements, not a metadata field")
    return clean_text(item[()])


def nx_child(group: h5py.Group, nx_class: str) -> h5py.Group | None:
    """The first child group of a NeXus class, e.g. the NXinstrument of an NXentry."""
    for name in group:
        link = group.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            continue  # links out of the file are never followed, not even to look
        item = group[name]
        if isinstance(item, h5py.Group) and clean_text(item.attrs.get("NX_class", "")) == nx_class:
            return item
    return None


def read_metadata(source: Any) -> dict[str, str]:
    """Title, times, application definition, instrument, sample and probe of a NeXus file.

    ``source`` is a path or an open binary file. Raises ``OSError`` (:class:`Refused`
    among them) for a file that is not HDF5, cannot be read, or is refused.
    """
    meta: dict[str, str] = {}
    with h5py.File(source, "r") as f:
        entry = child(f, clean_text(f.attrs.get("default", "")))
        if not isinstance(entry, h5py.Group):
            entry = nx_child(f, "NXentry")
        if entry is None:
            return meta
        for key in ("title", "start_time", "end_time", "definition"):
            if (value := field(entry, key)) is not None:
                meta[key] = value
        instrument = nx_child(entry, "NXinstrument")
        for group, key in ((instrument, "instrument"), (nx_child(entry, "NXsample"), "sample")):
            if group is not None and (value := field(group, "name")) is not None:
                meta[key] = value
        source_group = nx_child(instrument, "NXsource") if instrument is not None else None
        if source_group is not None and (value := field(source_group, "probe")) is not None:
            meta["probe"] = value
    return meta


# -- the worker ------------------------------------------------------------------------


def _send(sock: socket.socket, payload: dict) -> None:
    data = json.dumps(payload).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(sock: socket.socket) -> dict:
    header = _exactly(sock, 4)
    return json.loads(_exactly(sock, struct.unpack("!I", header)[0]))


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the metadata worker went away")
        data += chunk
    return data


def _become_unprivileged() -> None:
    """Limits first, then (as root) nobody's uid with no groups; no way back."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # it writes no file
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _serve(sock: socket.socket) -> None:
    """The worker's loop: a file descriptor in, its metadata (or the reason) out."""
    os.chdir("/")
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 16, 1)
        if not message or not fds:
            return
        try:
            with os.fdopen(fds[0], "rb") as handle:
                _send(sock, {"meta": read_metadata(handle)})
        except Exception as e:  # everything is the file's fault here: say what, go on
            _send(sock, {"error": f"{type(e).__name__}: {clean_text(e)}"})


class MetadataReader:
    """A worker process reading NeXus metadata for one indexing run (a context manager)."""

    def __init__(self, timeout: float = 20.0) -> None:
        self.timeout = timeout
        self._pid = 0
        self._sock: socket.socket | None = None

    def __enter__(self) -> MetadataReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                ours.close()
                _become_unprivileged()
                _serve(theirs)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        ours.settimeout(self.timeout)
        self._pid, self._sock = pid, ours
        return ours

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = 0

    def read(self, path: Path) -> dict[str, str]:
        """The metadata of ``path`` (opened here, never following a symlink); ``OSError``
        when the worker refuses, fails or takes longer than ``timeout``."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            sock = self._sock or self._start()
            try:
                socket.send_fds(sock, [b"r"], [fd])
                answer = _receive(sock)
            except (OSError, ValueError) as e:  # timeout, crash (memory limit), nonsense
                self.close()
                raise OSError(f"the metadata worker gave up on {path.name}: {e}") from None
        finally:
            os.close(fd)
        if "error" in answer:
            raise OSError(answer["error"])
        return {str(k): clean_text(v) for k, v in dict(answer["meta"]).items()}


__all__ = ["MAX_ELEMENTS", "MetadataReader", "Refused", "clean_text", "read_metadata"]
