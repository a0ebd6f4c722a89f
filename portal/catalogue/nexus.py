"""Reading a dataset's metadata from its NeXus file: untrusted input, read at arm's length.

A data file is written by whoever ran the experiment, and HDF5 can make a file read
*other* files: external storage for a field, external links, virtual datasets. Read by
the hub (root on a Docker host), a ``title`` stored externally in ``/etc/shadow`` or the
hub's own crypt key would be copied into the catalogue and shown on every page. So:

- Only hard links are followed, inside the file; a field stored externally or virtually,
  or larger than :data:`MAX_ELEMENTS`, is refused, and the file skipped.
- The reading happens in worker processes (:class:`MetadataReader`): a fresh Python,
  started without the indexer's environment, memory, descriptors or log, leaves the
  network, shuts itself in an empty folder (chroot), sets memory, CPU, file-size and
  open-file limits, becomes nobody (when started as root) and undumpable, then forks one
  worker per proposal, which may not fork. A worker gets the files as descriptors the
  indexer opened below the data root without following any symlink or blocking on a
  FIFO, up to :data:`BATCH` of them in one message (one round-trip, not one per file);
  a worker taken over by a malicious file sees no other proposal's files, no file by
  path at all, and has nothing to send them to. What it answers is bounded in size and
  time, and checked. An indexer that wants several cores opens several readers, each
  with its own worker processes, each as contained as one.
- The indexer waits :attr:`MetadataReader.timeout` seconds per file; a worker that does
  not answer is killed and replaced, that file skipped, and the rest of its batch given
  to the new worker.
- What comes back is text for people: control characters removed, at most
  :data:`MAX_TEXT` characters per field; beside it a bounded summary of the file's tree
  (:mod:`portal.catalogue.tree`) and, when asked, a PNG thumbnail of its default plot
  (:mod:`portal.catalogue.thumbnails`), both checked again by the indexer.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py

MAX_ELEMENTS = 4096  # a metadata field is a short string, not an array of millions
MAX_TEXT = 500
#: Bytes of a thumbnail PNG kept: a 128 x 128 image of noise is 49 KiB.
MAX_THUMBNAIL = 64 << 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOBODY = 65534
MEMORY = 1 << 30  # address space of the worker, in bytes
CPU_SECONDS = 600  # CPU time of one worker, across the files it reads


log = logging.getLogger(__name__)


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
    from portal.catalogue import chunks  # it builds on this module

    try:  # compressed chunks are decoded there, never by HDF5's filters
        return clean_text(chunks.read(item, (slice(None),) * item.ndim))
    except Refused:
        return None  # a field stored in a way the portal does not decode is left out


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


def metadata_of(f: h5py.File) -> dict[str, str]:
    """Title, times, application definition, instrument, sample and probe of an open
    NeXus file. Raises :class:`Refused` for a field the portal will not read."""
    meta: dict[str, str] = {}
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


def read_metadata(source: Any) -> dict[str, str]:
    """:func:`metadata_of` the file at ``source``, a path or an open binary file. Raises
    ``OSError`` (:class:`Refused` among them) for a file that is not HDF5, cannot be
    read, or is refused."""
    with h5py.File(source, "r") as f:
        return metadata_of(f)


def read_file(source: Any, thumbnail: bool) -> dict[str, Any]:
    """A worker's answer for one file: its metadata, its tree summary and (``thumbnail``)
    its default plot as a base64 PNG. Only the metadata can fail the file: a tree or a
    thumbnail the portal will not make is simply left out."""
    from portal.catalogue import thumbnails, tree  # they build on this module

    with h5py.File(source, "r") as f:
        answer: dict[str, Any] = {"meta": metadata_of(f)}
        answer["tree"] = [e.as_list() for e in tree.tree_of(f)]
        png = thumbnails.thumbnail(f) if thumbnail else None
        if png is not None and len(png) <= MAX_THUMBNAIL:
            answer["thumbnail"] = base64.b64encode(png).decode()
    return answer


class FileMetadata(dict[str, str]):
    """A file's metadata fields (text for people, compared and used as a plain dict) and
    what the index keeps beside them: the file's tree summary and thumbnail (PNG bytes),
    both checked by :meth:`of` whatever the worker sent."""

    thumbnail: bytes | None = None
    tree: tuple[Any, ...] = ()

    @classmethod
    def of(cls, answer: dict[str, Any]) -> FileMetadata:
        """From a worker's answer that may be a taken-over worker's: ``ValueError`` for
        nonsense in the metadata; a malformed tree or thumbnail is dropped."""
        from portal.catalogue.tree import MAX_ENTRIES, checked

        found = cls({str(k): clean_text(v) for k, v in dict(answer["meta"]).items()})
        try:
            entries = answer.get("tree") or []
            found.tree = tuple(checked(e) for e in entries[:MAX_ENTRIES])
        except (TypeError, ValueError):
            found.tree = ()
        try:
            png = base64.b64decode(answer.get("thumbnail") or "", validate=True)
        except (TypeError, ValueError):
            png = b""
        if png.startswith(PNG_SIGNATURE) and len(png) <= MAX_THUMBNAIL:
            found.thumbnail = png
        return found


# -- the workers ------------------------------------------------------------------------
#
# MetadataReader (in the indexing process) --control socket--> the zygote: a fresh Python
# started as root, which imports h5py, cuts itself off (no network, limits, nobody, not
# dumpable) and then forks one worker per proposal. A worker reads the files of one
# proposal, handed over as open descriptors, and answers each with its metadata.

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
MAX_REPLY = 1 << 18  # one file's answer: metadata, tree summary and thumbnail
#: Files handed to a worker in one message. A worker may hold 32 descriptors (the limit
#: :func:`_contain` sets): a batch, its socket and the standard streams stay well inside.
BATCH = 16
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38


def _send(sock: socket.socket, payload: dict) -> None:
    """One answer; one over :data:`MAX_REPLY` first loses its tree summary, then its
    thumbnail, so that a file's extras never cost it its metadata."""
    data = json.dumps(payload).encode()
    for extra in ("tree", "thumbnail"):
        if len(data) <= MAX_REPLY:
            break
        payload.pop(extra, None)
        data = json.dumps(payload).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive(sock: socket.socket, deadline: float) -> dict:
    """One length-prefixed JSON object, at most :data:`MAX_REPLY` bytes, by ``deadline``."""
    (size,) = struct.unpack("!I", _exactly(sock, 4, deadline))
    if size > MAX_REPLY:
        raise ValueError(f"a reply of {size} bytes")
    answer = json.loads(_exactly(sock, size, deadline))
    if not isinstance(answer, dict):
        raise ValueError("a reply that is not an object")
    return answer


def _exactly(sock: socket.socket, size: int, deadline: float | None = None) -> bytes:
    data = b""
    while len(data) < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete answer in time")
            sock.settimeout(left)
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the metadata worker went away")
        data += chunk
    return data


def _warm_up() -> None:
    """Read one small file in memory, so every module a read needs is loaded before the
    zygote loses its view of the filesystem."""
    for plot, values in (("image", [[1.0, 2.0], [3.0, 4.0]]), ("curve", [1.0, 2.0])):
        buffer = io.BytesIO()
        with h5py.File(buffer, "w") as f:
            entry = f.create_group("entry")
            entry.attrs.update(NX_class="NXentry", default=plot)
            entry["title"] = "warm-up"
            data = entry.create_group(plot)
            data.attrs.update(NX_class="NXdata", signal="y")
            data["y"] = values
        read_file(io.BytesIO(buffer.getvalue()), thumbnail=True)
    json.dumps({"x": [1]})


def _contain(empty: str) -> str:
    """No network, no filesystem but an empty folder, bounded, no way to gain privileges
    or be traced, and nobody. Returns what could not be done, for the indexer's log."""
    libc = ctypes.CDLL(None, use_errno=True)
    missing = ""
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) == 0:
        os.chroot(empty)
        os.chdir("/")
    else:  # e.g. a container that forbids namespaces: limits and checks still hold
        missing = f"no namespaces ({os.strerror(ctypes.get_errno())}): network and files stay"
    for limit, value in (
        (resource.RLIMIT_AS, MEMORY),
        (resource.RLIMIT_CPU, CPU_SECONDS),
        (resource.RLIMIT_FSIZE, 0),  # it writes no file
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_NOFILE, 32),
    ):
        resource.setrlimit(limit, (value, value))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # other nobody processes cannot ptrace it
    return missing


def _serve(sock: socket.socket) -> None:
    """A worker's loop: a batch of file descriptors in (``t``: with thumbnails, ``r``:
    without), one answer per file out, in order: what :func:`read_file` reads of it, or
    the reason it has none."""
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # no child to outlive a kill
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 16, BATCH)
        if not message or not fds:
            return
        for fd in fds:
            try:
                with os.fdopen(fd, "rb") as handle:
                    answer = read_file(handle, thumbnail=message == b"t")
            except Exception as e:  # everything is the file's fault here: say what, go on
                answer = {"error": f"{type(e).__name__}: {clean_text(e)}"}
            _send(sock, answer)


def _zygote(control: socket.socket) -> None:
    """Fork a worker for each socket received; tell the reader its pid."""
    while True:
        message, fds, _, _ = socket.recv_fds(control, 16, 1)
        if not message or not fds:
            return
        pid = os.fork()
        if pid == 0:
            control.close()
            try:
                _serve(socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])
        control.sendall(struct.pack("!I", pid))
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass


def main(argv: list[str]) -> None:
    """``python -m portal.catalogue.nexus FD EMPTY``: the zygote, on the control socket
    FD, inside the empty folder EMPTY."""
    control = socket.socket(fileno=int(argv[1]))
    _warm_up()
    _send(control, {"missing": _contain(argv[2])})
    _zygote(control)


#: What the zygote's fresh interpreter inherits of the indexer's environment: no secret.
_ENVIRONMENT = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG", "LC_ALL", "TZ")


def open_below(root: int, relative: Path) -> int:
    """A regular file ``relative`` to the folder ``root``, opened without following any
    symlink and without blocking on a FIFO; raises ``OSError`` for anything else."""
    fd = os.dup(root)
    try:
        for part in relative.parts[:-1]:
            inner = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        found = os.open(relative.name, flags, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise OSError(f"{relative} is not a regular file")
    return found


class MetadataReader:
    """Reads NeXus metadata below ``root`` for one indexing run (a context manager), with
    each file's tree summary and, if ``thumbnails``, its thumbnail.

    :meth:`use` starts a new worker for each proposal, so a file that took over its
    worker sees no other proposal's files.
    """

    def __init__(self, root: Path, timeout: float = 20.0, thumbnails: bool = True) -> None:
        self.timeout = timeout
        self.thumbnails = thumbnails
        self._root = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._zygote: subprocess.Popen | None = None
        self._control: socket.socket | None = None
        self._worker: tuple[socket.socket, int] | None = None
        self._proposal: str | None = None
        self._empty = ""

    def __enter__(self) -> MetadataReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def use(self, proposal: str) -> None:
        """The next files belong to ``proposal``: a fresh worker reads them."""
        if proposal != self._proposal:
            self._end_worker()
            self._proposal = proposal

    def _start_zygote(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self._empty = tempfile.mkdtemp(prefix="panosc-nexus-")
        os.chmod(self._empty, 0o555)
        env = {k: os.environ[k] for k in _ENVIRONMENT if k in os.environ}
        env |= {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "portal.catalogue.nexus", str(theirs.fileno())]
        self._zygote = subprocess.Popen(
            [*command, self._empty],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # a worker must not write the indexer's log
            env=env,
            cwd="/",
        )
        theirs.close()
        self._control = ours
        status = _receive(ours, time.monotonic() + 60)  # a fresh Python importing h5py
        if status.get("missing"):
            log.warning("catalogue: the metadata worker runs less contained: %s", status["missing"])
        return ours

    def _new_worker(self) -> tuple[socket.socket, int]:
        for attempt in (1, 2):  # a zygote that died is started again, once
            ours, theirs = socket.socketpair()
            try:
                control = self._control or self._start_zygote()
                socket.send_fds(control, [b"w"], [theirs.fileno()])
                (pid,) = struct.unpack("!I", _exactly(control, 4, time.monotonic() + 10))
            except (OSError, ValueError):
                ours.close()
                self._stop_zygote()
                if attempt == 2:
                    raise
                continue
            finally:
                theirs.close()
            self._worker = (ours, pid)
            return self._worker
        raise AssertionError("unreachable")

    def _end_worker(self) -> None:
        if self._worker is not None:
            sock, pid = self._worker
            sock.close()
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._worker = None

    def _stop_zygote(self) -> None:
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None
        if self._empty:
            shutil.rmtree(self._empty, ignore_errors=True)
            self._empty = ""

    def close(self) -> None:
        self._end_worker()
        self._stop_zygote()
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def worker_pid(self) -> int:
        return self._worker[1] if self._worker else 0

    def read(self, relative: Path) -> FileMetadata:
        """The metadata of the file at ``relative`` below the root; ``OSError`` when it is
        not a regular file reached without symlinks, or the worker refuses, fails or takes
        longer than ``timeout``."""
        (result,) = self.read_many([relative])
        if isinstance(result, OSError):
            raise result
        return result

    def read_many(self, relatives: Sequence[Path]) -> list[FileMetadata | OSError]:
        """The metadata of each file, or the ``OSError`` that says why not (as :meth:`read`
        would raise it), in order: :data:`BATCH` files per round-trip to the worker, so a
        worker is never idle waiting for the indexer between two small files.

        Every file must be in the proposal of the last :meth:`use` (``ValueError``): a
        worker sees one proposal's files, a whole batch at a time.
        """
        if any(r.parts[:1] != (self._proposal,) for r in relatives):
            raise ValueError(f"a file outside proposal {self._proposal!r}: call use() first")
        results: list[FileMetadata | OSError] = []
        for start in range(0, len(relatives), BATCH):
            results += self._read_batch(relatives[start : start + BATCH])
        return results

    def _read_batch(self, relatives: Sequence[Path]) -> list[FileMetadata | OSError]:
        results: list[FileMetadata | OSError | None] = [None] * len(relatives)
        fds: dict[int, int] = {}
        try:
            for n, relative in enumerate(relatives):
                try:
                    fds[n] = open_below(self._root, relative)
                except OSError as e:
                    results[n] = e
            waiting = list(fds)
            while waiting:  # after a worker gave up, the rest of the batch goes to a new one
                waiting = self._exchange(waiting, fds, relatives, results)
        finally:
            for fd in fds.values():
                os.close(fd)
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _exchange(
        self,
        waiting: list[int],
        fds: dict[int, int],
        relatives: Sequence[Path],
        results: list[FileMetadata | OSError | None],
    ) -> list[int]:
        """Send the ``waiting`` files to the worker and take its answers, each within
        ``timeout``; returns those still waiting when the worker gave up on one."""
        sock = None
        for done, n in enumerate(waiting):
            try:
                if sock is None:
                    sock, _ = self._worker or self._new_worker()
                    mode = b"t" if self.thumbnails else b"r"
                    socket.send_fds(sock, [mode], [fds[m] for m in waiting])
                answer = _receive(sock, time.monotonic() + self.timeout)
                if "error" in answer:
                    results[n] = Refused(clean_text(answer["error"]))
                else:
                    results[n] = FileMetadata.of(answer)
            except Exception as e:  # timeout, crash (memory limit), nonsense
                self._end_worker()
                results[n] = OSError(f"the metadata worker gave up on {relatives[n].name}: {e}")
                return waiting[done + 1 :]
        return []


__all__ = [
    "BATCH",
    "MAX_ELEMENTS",
    "FileMetadata",
    "MetadataReader",
    "Refused",
    "clean_text",
    "open_below",
    "read_file",
    "read_metadata",
]

if __name__ == "__main__":
    main(sys.argv)
