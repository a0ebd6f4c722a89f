"""Provenance records: the program that writes a session's RO-Crate where the user's results are.

It runs where the user's files are, as the user: inside their container (Docker) or a sandbox
of its own (local), started by the hub as ``python -I -S -c <this file's text> ACTION FACTS...``,
exactly as :mod:`spawner.course_delivery` is. Isolated mode and no site-packages: nothing the
user can write is imported, so this module uses the standard library only. Running as the user
is the first guard: it can read and write only what the user can, so a link to another user's
file or to ``/etc/shadow`` cannot be hashed into a record however it is planted.

``start`` writes ``<area>/provenance/<UTC start>-<server>/ro-crate-metadata.json``: who, when,
the server type, the environment (image and digest) and the mounted datasets, facts the hub
decided and passes in. ``stop`` rewrites it with the end time and the notebooks and scripts the
user saved during the session (:data:`SUFFIXES`), each with its sha256 and size. The hub reads
the crates back with :func:`spawner.provenance.read_records`.

Everything in the user's folders is untrusted: the walk never follows a symlink, skips hidden
folders (``.ipynb_checkpoints``, ``.git``...), caches and the read-only ``~/datasets`` mounts
(the processed areas in it are walked, they hold results), and stops after
:data:`MAX_ENTRIES` entries, :data:`MAX_FILES` files or :data:`MAX_HASHED_BYTES` bytes; a crate
says when it was capped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import time
from pathlib import PurePosixPath
from typing import Any

CRATE_FILE = "ro-crate-metadata.json"
FOLDER = "provenance"
RO_CRATE = "https://w3id.org/ro/crate/1.1"
#: Terms RO-Crate 1.1's context lacks, as the spec's ad hoc vocabulary rule asks: each is
#: described in the crate by an ``rdf:Property`` entity (:data:`TERMS`).
TERM_BASE = "urn:panosc-portal:terms:"
TERMS = {
    "sha256": "The SHA-256 of the file's content when the session stopped, in hex.",
    "serverType": "The kind of server the session ran: lab (JupyterLab) or desktop.",
    "serverName": "The JupyterHub server name of the session; empty for the default server.",
    "capped": "Why the list of result files is incomplete: the walk hit one of its limits.",
}
CONTEXT: list[Any] = [f"{RO_CRATE}/context", {k: TERM_BASE + k for k in TERMS}]
SESSION_ID = "#session"
AGENT_ID = "#user"
ENVIRONMENT_ID = "#environment"

#: What counts as a notebook or script: the languages people analyse PaN data with.
SUFFIXES = frozenset(
    {".ipynb", ".py", ".m", ".jl", ".R", ".r", ".sh", ".ijm", ".mac", ".cfg", ".yaml", ".yml"}
)
#: Limits of one walk: entries looked at, files recorded, bytes hashed (all files) and the
#: largest file hashed (a bigger one is recorded with its size and no hash).
MAX_ENTRIES = 50_000
MAX_FILES = 1_000
MAX_HASHED_BYTES = 256 << 20
MAX_FILE_BYTES = 64 << 20
#: Folders never walked: caches and environments, full of files nobody wrote by hand.
SKIPPED = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "provenance"})
DATASETS = "datasets"


def utc_iso(epoch: float) -> str:
    """``2026-12-01T00:23:20Z``: RO-Crate's dates are ISO 8601."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def folder_name(started: float, server_name: str) -> str:
    """The crate's folder: ``<UTC start as YYYYmmddTHHMMSSZ>-<server name or 'default'>``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started)) + "-" + (server_name or "default")


def _hash(dir_fd: int, name: str, budget: int) -> tuple[str, int] | None:
    """sha256 and size of regular file ``name`` in ``dir_fd``; ``None`` if it is not one.

    Opened without following a symlink and checked to be a regular file once open (a file
    swapped for a link or a pipe between the listing and the open is skipped). ``("", size)``
    when it is over :data:`MAX_FILE_BYTES` or the remaining ``budget``.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > min(MAX_FILE_BYTES, budget):
            return "", info.st_size
        digest, size = hashlib.sha256(), 0
        while size <= info.st_size:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        return digest.hexdigest(), size


def saved_files(home: str, areas: list[str], since: float) -> tuple[list[dict[str, Any]], str]:
    """The notebooks and scripts under ``home`` modified at or after ``since``, and why the
    list is incomplete (empty when it is not).

    ``areas`` are the processed areas, relative to ``home`` (``datasets/MA1234/processed``):
    the only folders under ``~/datasets`` that are walked. Paths are POSIX and relative to
    ``home``. The walk goes folder by folder through descriptors opened with ``O_NOFOLLOW``,
    so no symlink leads it out of the home, whatever the user plants or swaps while it runs.
    """
    found: list[dict[str, Any]] = []
    entries, hashed, capped = 0, 0, ""
    allowed = [PurePosixPath(a) for a in areas]

    def in_area(path: PurePosixPath) -> bool:
        return path.parts[0] != DATASETS or any(path.is_relative_to(a) for a in allowed)

    def walked(path: PurePosixPath) -> bool:
        if path.name.startswith(".") or path.name in SKIPPED:
            return False  # hidden folders (.ipynb_checkpoints, .git), caches, records
        return in_area(path) or any(a.is_relative_to(path) for a in allowed)

    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        root_fd = os.open(home, flags)
    except OSError:
        return found, ""
    stack: list[tuple[int, PurePosixPath]] = [(root_fd, PurePosixPath())]
    try:
        while stack and not capped.startswith("more than " + str(MAX_ENTRIES)):
            dir_fd, rel = stack.pop()
            folders: list[tuple[str, PurePosixPath]] = []
            try:
                with os.scandir(dir_fd) as listing:
                    children = sorted(listing, key=lambda e: e.name)
            except OSError:
                children = []
            for entry in children:
                entries += 1
                if entries > MAX_ENTRIES:
                    capped = f"more than {MAX_ENTRIES} entries"
                    break
                path = rel / entry.name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if walked(path):
                        folders.append((entry.name, path))
                    continue
                if not stat.S_ISREG(info.st_mode) or entry.name.startswith("."):
                    continue  # links (never followed), pipes, devices; hidden files
                if path.suffix not in SUFFIXES or info.st_mtime < since or not in_area(path):
                    continue
                if len(found) >= MAX_FILES:
                    capped = capped or f"more than {MAX_FILES} files"
                    continue  # counted no further; the walk stops at MAX_ENTRIES
                result = _hash(dir_fd, entry.name, MAX_HASHED_BYTES - hashed)
                if result is None:
                    continue
                digest, size = result
                hashed += size if digest else 0
                if not digest and size <= MAX_FILE_BYTES:
                    capped = capped or f"more than {MAX_HASHED_BYTES} bytes to hash"
                found.append({"path": str(path), "sha256": digest, "size": size})
            for name, path in reversed(folders):
                try:
                    stack.append((os.open(name, flags, dir_fd=dir_fd), path))
                except OSError:
                    continue
            os.close(dir_fd)
    finally:
        for fd, _ in stack:
            os.close(fd)
    return found, capped


def crate(facts: dict[str, Any], files: list[dict[str, Any]], capped: str) -> dict[str, Any]:
    """The RO-Crate 1.1 metadata document of one session (plain JSON-LD).

    The root data entity ``./`` (a Dataset) mentions the session, a ``CreateAction`` whose
    ``agent`` is the user, ``instrument`` the environment (a ``SoftwareApplication`` with the
    image and its digest), ``object`` the input datasets (contextual ``Dataset`` entities,
    ``identifier`` the pid) and ``result`` the saved files (``File`` entities). A file's
    ``@id`` is its path relative to the crate's folder (``../../fit.ipynb``): the file is
    where the user keeps it, outside the crate, and is not copied.
    """
    started, stopped = facts["started"], facts.get("stopped")
    server = facts.get("server_name") or ""
    crate_dir = PurePosixPath(facts["crate"])  # relative to the home
    up = "/".join([".."] * len(crate_dir.parts))
    datasets = [
        {"@id": f"#dataset-{i}", "@type": "Dataset", "identifier": pid, "name": title}
        for i, (pid, title) in enumerate(facts.get("datasets") or [], 1)
    ]
    results = [
        {
            "@id": f"{up}/{f['path']}",
            "@type": "File",
            "name": f["path"],
            "contentSize": f["size"],
            **({"sha256": f["sha256"]} if f["sha256"] else {}),
        }
        for f in files
    ]
    session: dict[str, Any] = {
        "@id": SESSION_ID,
        "@type": "CreateAction",
        "name": f"Session {server or 'default'} of {facts['user']}",
        "agent": {"@id": AGENT_ID},
        "startTime": utc_iso(started),
        "instrument": {"@id": ENVIRONMENT_ID},
        "object": [{"@id": d["@id"]} for d in datasets],
        "serverType": facts.get("server_type") or "",
        "serverName": server,
    }
    if stopped is not None:
        session["endTime"] = utc_iso(stopped)
        session["result"] = [{"@id": r["@id"]} for r in results]
        if capped:
            session["capped"] = capped
    environment = {
        "@id": ENVIRONMENT_ID,
        "@type": "SoftwareApplication",
        "name": facts.get("environment") or "",
        "identifier": facts.get("digest") or "",
        "url": facts.get("image") or "",
        "description": facts.get("environment_description") or "",
    }
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": f"Provenance of {facts['user']}'s session {server or 'default'}",
        "description": (
            "What one portal session used (datasets, environment) and, once it stopped, the"
            " notebooks and scripts saved during it."
        ),
        "datePublished": utc_iso(stopped if stopped is not None else started),
        "mentions": {"@id": SESSION_ID},
    }
    if stopped is not None:
        root["hasPart"] = [{"@id": r["@id"]} for r in results]
    terms = [
        {"@id": TERM_BASE + k, "@type": "rdf:Property", "rdfs:label": k, "rdfs:comment": text}
        for k, text in TERMS.items()
    ]
    descriptor = {
        "@id": CRATE_FILE,
        "@type": "CreativeWork",
        "conformsTo": {"@id": RO_CRATE},
        "about": {"@id": "./"},
    }
    person = {"@id": AGENT_ID, "@type": "Person", "name": facts["user"]}
    graph = [descriptor, root, session, person, environment, *datasets, *results, *terms]
    return {"@context": CONTEXT, "@graph": graph}


def _open_folder(parent: int, name: str) -> int:
    """``name`` in ``parent``, made if missing (mode 755), opened without following a link:
    a processed area is shared by the proposal's members, who could plant one."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    return os.open(name, flags, dir_fd=parent)


def write(home: str, facts: dict[str, Any], document: dict[str, Any]) -> str:
    """Write ``document`` as ``<home>/<facts['crate']>/ro-crate-metadata.json``, atomically
    and readable (mode 644), never through a symlink; returns the file's path."""
    parts = PurePosixPath(facts["crate"]).parts
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(home, flags)
    try:
        for index, name in enumerate(parts):
            if name in ("", ".", "..") or "/" in name:
                raise ValueError(f"bad crate folder {facts['crate']!r}")
            if index < len(parts) - 2:  # the area: it must exist already (a mount, the home)
                nxt = os.open(name, flags, dir_fd=fd)
            else:  # provenance/ and the session's folder
                nxt = _open_folder(fd, name)
            os.close(fd)
            fd = nxt
        partial = f".{CRATE_FILE}.partial"
        data = (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()
        out = os.open(
            partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=fd
        )
        with os.fdopen(out, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)
        os.replace(partial, CRATE_FILE, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)
    return f"{home}/{facts['crate']}/{CRATE_FILE}"


def main(argv: list[str]) -> int:
    """``start FACTS...`` or ``stop FACTS...``: FACTS is the hub's JSON, split into arguments
    of at most 100 kB (the kernel's limit for one is 128 kB). Prints one JSON line."""
    if len(argv) < 2 or argv[0] not in ("start", "stop"):
        print("usage: start|stop FACTS-JSON...", file=sys.stderr)
        return 2
    facts = json.loads("".join(argv[1:]))
    home = os.path.expanduser(facts.get("home") or "~")
    files: list[dict[str, Any]] = []
    capped = ""
    if argv[0] == "stop":
        facts.setdefault("stopped", time.time())
        files, capped = saved_files(home, list(facts.get("areas") or []), facts["started"])
    else:
        facts["stopped"] = None
    path = write(home, facts, crate(facts, files, capped))
    print(json.dumps({"crate": path, "files": len(files), "capped": capped}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
