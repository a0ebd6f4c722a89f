"""Provenance on the hub: the facts of a session's record, and reading records back.

Each session leaves an RO-Crate (:mod:`spawner.provenance_record`) where the user's results
live: the processed area of the first (sorted) mounted proposal the user is a member of, else
the home. The hub decides the facts (user, times, server type, environment, image digest,
datasets) and runs the record program *as the user, where the files are*: ``docker exec``
as jovyan, or a sandbox of its own on the local backend; the hub never writes into a home
itself, and the user's tokens never leave it. A failure to write a record is logged and
never blocks a start or a stop.

:func:`read_records` is the other direction, for publishing: it reads the crates under a
folder the hub can see (a processed area on the host), trusting nothing in them.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spawner.provenance_record import (
    AGENT_ID,
    CRATE_FILE,
    ENVIRONMENT_ID,
    FOLDER,
    SESSION_ID,
)

#: The largest crate :func:`read_records` parses, and the most crates it reads in one folder:
#: a record is a few kB per file it lists (:data:`spawner.provenance_record.MAX_FILES`).
MAX_CRATE_BYTES = 4 << 20
MAX_RECORDS = 1000


@dataclass(frozen=True)
class Record:
    """One session's provenance record, as read back from its crate.

    ``started`` and ``stopped`` are ISO 8601 UTC (``2026-12-01T00:23:20Z``); ``stopped`` is
    ``None`` while the session runs (or if it ended without its stop being recorded).
    ``datasets`` are the inputs as (pid, title); ``files`` the notebooks and scripts saved
    during the session as (path relative to the home, sha256; empty when too big to hash).
    """

    path: Path
    user: str
    server_name: str
    server_type: str
    started: str
    stopped: str | None
    environment: str
    image: str
    digest: str
    datasets: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]


def _text(value: Any) -> str:
    """A string field, or empty: anything else in an untrusted crate is ignored."""
    return value if isinstance(value, str) else ""


def _refs(value: Any) -> list[str]:
    """The ``@id``s of a JSON-LD reference or list of references."""
    items = value if isinstance(value, list) else [value]
    return [i["@id"] for i in items if isinstance(i, dict) and isinstance(i.get("@id"), str)]


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link) of at most ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            return None
        data = f.read(limit + 1)
    return data if len(data) <= limit else None


def parse_record(folder: Path, document: Any) -> Record | None:
    """The :class:`Record` in a parsed crate, or ``None`` if it is not one of ours."""
    if not isinstance(document, dict) or not isinstance(document.get("@graph"), list):
        return None
    entities = {
        e["@id"]: e
        for e in document["@graph"]
        if isinstance(e, dict) and isinstance(e.get("@id"), str)
    }
    session = entities.get(SESSION_ID)
    if not session or session.get("@type") != "CreateAction":
        return None
    started = _text(session.get("startTime"))
    if not started:
        return None
    agent = entities.get(next(iter(_refs(session.get("agent"))), AGENT_ID)) or {}
    environment = entities.get(next(iter(_refs(session.get("instrument"))), ENVIRONMENT_ID)) or {}
    datasets = []
    for ref in _refs(session.get("object")):
        entity = entities.get(ref) or {}
        pid = _text(entity.get("identifier"))
        if pid:
            datasets.append((pid, _text(entity.get("name"))))
    files = []
    for ref in _refs(session.get("result")):
        entity = entities.get(ref) or {}
        name = _text(entity.get("name"))
        if name:
            files.append((name, _text(entity.get("sha256"))))
    stopped = _text(session.get("endTime")) or None
    return Record(
        path=folder,
        user=_text(agent.get("name")),
        server_name=_text(session.get("serverName")),
        server_type=_text(session.get("serverType")),
        started=started,
        stopped=stopped,
        environment=_text(environment.get("name")),
        image=_text(environment.get("url")),
        digest=_text(environment.get("identifier")),
        datasets=tuple(datasets),
        files=tuple(files),
    )


def read_records(folder: Path) -> list[Record]:
    """The records under ``folder/provenance/*/ro-crate-metadata.json``, oldest first.

    ``folder`` is where results live (a processed area, a home) and everything in it is the
    user's: a ``provenance`` folder or crate that is a symlink is skipped, as is a crate over
    :data:`MAX_CRATE_BYTES`, one that is not JSON or not shaped like ours; at most
    :data:`MAX_RECORDS` crates are read.
    """
    base = folder / FOLDER
    try:
        if not stat.S_ISDIR(base.lstat().st_mode):
            return []
        names = sorted(os.listdir(base))[:MAX_RECORDS]
    except OSError:
        return []
    records = []
    for name in names:
        crate_dir = base / name
        try:
            if not stat.S_ISDIR(crate_dir.lstat().st_mode):
                continue
        except OSError:
            continue
        data = _read_regular(crate_dir / CRATE_FILE, MAX_CRATE_BYTES)
        if data is None:
            continue
        try:
            record = parse_record(crate_dir, json.loads(data))
        except (ValueError, RecursionError):
            continue
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda r: (r.started, r.path.name))
