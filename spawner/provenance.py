"""Provenance on the hub: the facts of a session's record, and reading records back.

Each session leaves an RO-Crate (:mod:`spawner.provenance_record`) where the user's results
live: the processed area of the first (sorted) mounted proposal the user is a member of, else
the home. The hub decides the facts (user, times, server type, environment, image digest,
datasets) and runs the record program *as the user, where the files are*: ``docker exec``
as jovyan, or a sandbox of its own on the local backend; the hub never writes into a home
itself, and the user's tokens never leave it. A failure to write a record is logged and
never blocks a start or a stop.

Backends: Docker (the image digest as Docker reports it for the container) and local (the
hub's Python and a digest of its distributions). Kubernetes needs no exec through the API
server: the pod runs the same program itself, from ``postStart`` and ``preStop`` hooks whose
commands carry the program and the facts (:mod:`spawner.kube`); its digest is the one the
image reference pins, the only one a pod can know. Slurm (:mod:`spawner.slurm`) runs it in a
step of the session's own job, as the user's account, in a sandbox the node program builds
like the server's (the home and the processed areas only); its digest is the id of the image
the environment was unpacked from, as ``images export`` wrote it beside the unpacked root.

:func:`read_records` is the other direction, for publishing: it reads the crates under a
folder the hub can see (a processed area on the host), trusting nothing in them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from traitlets import Integer
from traitlets.config import Configurable

from portal.upstream import log_name
from spawner import provenance_record
from spawner.mounts import DATASETS_DIR, Mount, proposal_folder
from spawner.provenance_record import (
    AGENT_ID,
    CRATE_FILE,
    ENVIRONMENT_ID,
    FOLDER,
    SESSION_ID,
    folder_name,
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
    capped: str = ""  # why ``files`` is incomplete (the walk hit a limit); empty if it is not


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
        capped=_text(session.get("capped")),
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


# -- writing: the hub's side --------------------------------------------------------------

#: Seconds a start waits for its record (which walks nothing) before it goes on without it.
START_SECONDS = 10
#: The kernel refuses one argument over 128 kB (MAX_ARG_STRLEN): the facts go in pieces.
ARGUMENT_BYTES = 100_000


def program() -> str:
    """The record program's text (:mod:`spawner.provenance_record`), run as ``python -c``."""
    return Path(provenance_record.__file__).read_text(encoding="utf-8")


def program_arguments(action: str, facts: dict[str, Any]) -> list[str]:
    """``action`` and the facts as ASCII JSON cut into arguments the kernel accepts."""
    text = json.dumps(facts, ensure_ascii=True)
    return [action, *(text[i : i + ARGUMENT_BYTES] for i in range(0, len(text), ARGUMENT_BYTES))]


def processed_area(proposal: str) -> str:
    """A proposal's processed area, relative to the home: ``datasets/<proposal>/processed``."""
    return str(PurePosixPath(DATASETS_DIR) / proposal_folder(proposal) / "processed")


def processed_mounts(processed_root: str, proposals: Iterable[str]) -> tuple[Mount, ...]:
    """The processed areas of ``proposals``, writable where the server sees them: all a
    record program's sandbox mounts besides the home (it writes the crate in the first and
    walks them all for results), never the datasets it only reads."""
    if not processed_root:
        return ()
    root = Path(processed_root).resolve()
    return tuple(
        Mount(root / proposal_folder(p), PurePosixPath(processed_area(p)), read_only=False)
        for p in sorted(proposals)
    )


@cache
def local_environment() -> tuple[str, str, str]:
    """Image, digest and description of the environment local servers run in: the hub's Python.

    There is no image to name, so the record states what it can check: the interpreter and its
    prefix, and a digest of the installed distributions (``name==version``, sorted), which
    changes whenever a package is added, removed or upgraded. Computed once per hub process.
    """
    installed = sorted(
        {f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata}
    )
    digest = hashlib.sha256("\n".join(installed).encode()).hexdigest()
    version = sys.version.split()[0]
    return (
        f"python {version} at {sys.prefix}",
        f"sha256:{digest}",
        f"The hub's Python environment ({len(installed)} distributions); the digest is the"
        " sha256 of their sorted name==version lines.",
    )


class ProvenanceRecorder(Configurable):
    """A spawner mixin: the facts of the session's record, and writing it at start and stop.

    A backend provides :meth:`environment_identity` and :meth:`run_record` (run the program as
    the user, where their files are). The facts are kept in the spawner's state, so a hub
    restarted while the server runs still completes the record at stop.
    """

    provenance_timeout = Integer(
        60,
        config=True,
        help="Seconds the provenance record program may take at a start or a stop (hashing the"
        " saved notebooks and scripts); past it, the record is left as it was and the stop"
        " goes on.",
    )

    _provenance: dict[str, Any] | None = None

    def get_state(self) -> dict:
        state = super().get_state()
        if self._provenance:
            state["provenance"] = self._provenance
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        facts = state.get("provenance")
        self._provenance = facts if isinstance(facts, dict) else None

    def clear_state(self) -> None:
        super().clear_state()
        self._provenance = None

    async def environment_identity(self) -> tuple[str, str, str]:
        """Image, digest and a description of the running server's environment."""
        raise NotImplementedError

    async def run_record(self, arguments: list[str], home: str) -> tuple[int, bytes, bytes]:
        """Run the record program with ``arguments`` as the user; exit code, output, errors."""
        raise NotImplementedError

    def record_home(self) -> str:
        """The user's home as the record program sees it."""
        raise NotImplementedError

    def session_facts(self, spawn: Any, started: float) -> dict[str, Any]:
        """What the record states of the session starting now (all decided on the hub)."""
        member_of = sorted(getattr(self, "member_of", ()) or ())
        areas = [processed_area(p) for p in member_of]
        area = areas[0] if areas else ""  # where results live: else the home
        folder = folder_name(started, self.name)
        return {
            "home": self.record_home(),
            "crate": f"{area}/{FOLDER}/{folder}" if area else f"{FOLDER}/{folder}",
            "areas": areas,
            "user": self.user.name,
            "server_name": self.name,
            "server_type": spawn.options.server_type,
            "started": started,
            "environment": spawn.environment.name,
            "datasets": [[d.pid, d.title] for d in spawn.datasets],
        }

    async def _record(self, action: str, facts: dict[str, Any], seconds: float) -> None:
        """Run the program; wait for it at most ``seconds`` (the program itself is killed
        after :attr:`provenance_timeout`); its result is logged."""
        code, out, err = await asyncio.wait_for(
            self.run_record(program_arguments(action, facts), facts["home"]), seconds
        )
        if code:
            problem = (err or out).decode(errors="replace").strip()[-500:]
            self.log.warning("%s: provenance %s not recorded: %s", log_name(self), action, problem)
        else:
            self.log.info("%s: provenance %s: %s", log_name(self), action, out.decode().strip())

    async def record_start(self, spawn: Any, started: float | None = None) -> None:
        """Write the record of a server that just answered: who, when, what it runs and reads.

        Any failure is logged, never raised: a session without its record is better than no
        session (and the stop still tries to write the whole record).
        """
        try:
            facts = self.session_facts(spawn, started or time.time())
            image, digest, description = await self.environment_identity()
            facts.update(image=image, digest=digest, environment_description=description)
            self._provenance = facts
            # The user waits for this one: no walk, so it takes ~0.1 s; never the whole
            # start_timeout, whatever the storage does.
            await self._record("start", facts, min(START_SECONDS, self.provenance_timeout))
        except Exception as e:
            self.log.warning("%s: provenance start not recorded: %r", log_name(self), e)

    async def record_stop(self) -> None:
        """Complete the record of a server about to stop: its end and the files saved in it.

        Any failure is logged, never raised: the stop must go on, and the user's files are
        theirs whatever happens to the record.
        """
        facts, self._provenance = self._provenance, None
        if not facts:
            return
        try:
            stop = {**facts, "stopped": time.time()}
            await self._record("stop", stop, self.provenance_timeout + 10)
        except Exception as e:
            self.log.warning("%s: provenance stop not recorded: %r", log_name(self), e)
