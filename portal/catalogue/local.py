"""The embedded catalogue: a SQLite index of a NeXus data tree laid out like a facility's.

The tree is ``<root>/<proposal>/<instrument>/<dataset>/`` and ``<root>/proposals.yaml`` says
who is a member of which proposal and when its data becomes public. Dataset metadata is
read from the NeXus files once, at index time, by unprivileged workers that refuse
anything stored outside the file (:mod:`portal.catalogue.nexus`), with a summary of each
file's tree and a thumbnail of its default plot, kept beside the dataset's row; membership
and public dates are read from ``proposals.yaml`` at query time (reloaded when it changes),
so revoking a member takes effect at the next spawn without re-indexing.

Built for a million datasets. Indexing reads metadata on every core (a thread per core,
each with a metadata reader and worker processes of its own) and re-reads only the
datasets whose files changed. A query
turns ``proposals.yaml`` into the proposals (and the few single datasets) this user may
read, lets SQLite count and order them in its indexes, and reads only the page it returns;
:func:`~portal.catalogue.base.may_read` still decides every dataset handed out.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from traitlets import Bool, Int, Unicode, default

from portal.catalogue import techniques
from portal.catalogue.base import (
    Catalogue,
    CatalogueUnavailable,
    DatasetNotFound,
    DatasetPage,
    may_read,
)
from portal.catalogue.model import CatalogueUser, Dataset, Thumbnail, TreeEntry
from portal.catalogue.nexus import FileMetadata, MetadataReader

NEXUS_SUFFIXES = (".nxs", ".nx5", ".h5", ".hdf5", ".hdf")

#: Bumped whenever the tables change: an index of another version is dropped and rebuilt
#: by the next indexing run (it holds nothing that is not in the data tree).
SCHEMA_VERSION = 4
#: The file the portal writes in a published (derived) dataset's folder of the tree
#: (``<root>/<proposal>/derived/<name>/``, beside the copy of the results): title,
#: description, inputs, software, files. Not counted in the dataset's size and files.
DERIVED_FILE = "derived.json"
MAX_DERIVED_BYTES = 4 << 20

SCHEMA = (
    """CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        pid TEXT NOT NULL UNIQUE,
        title TEXT NOT NULL,
        proposal TEXT NOT NULL,
        instrument TEXT NOT NULL,
        location TEXT NOT NULL,
        techniques TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        start_ts REAL,  -- start_time in seconds since 1970; NULL (undated) sorts last in DESC
        size INTEGER NOT NULL,
        file_count INTEGER NOT NULL,
        signature TEXT NOT NULL,
        derived TEXT  -- JSON of a published dataset: inputs, software, description; else NULL
    )""",
    # Newest first over everything, deciding access and technique from the index alone.
    "CREATE INDEX datasets_by_time ON datasets (start_ts, proposal, techniques)",
    # The datasets of a set of proposals, counted and ordered without reading their rows.
    "CREATE INDEX datasets_by_proposal ON datasets (proposal, techniques, start_ts)",
    # Substring search in titles and pids: any three characters or more, by trigram.
    "CREATE VIRTUAL TABLE dataset_text USING fts5(title, pid, tokenize='trigram')",
    # Every techniques value indexed, so a technique filter is an IN on an indexed column
    # (a value no dataset has any more matches nothing).
    "CREATE TABLE technique_sets (techniques TEXT PRIMARY KEY)",
    # What a dataset page shows beyond the row, by the row's id: the default plot as PNG and
    # the NeXus tree summary as JSON. Apart, so the queries' rows stay small.
    "CREATE TABLE dataset_details (id INTEGER PRIMARY KEY, thumbnail BLOB, tree TEXT NOT NULL)",
)
_TABLES = ("datasets", "dataset_text", "technique_sets", "dataset_details")

COLUMNS = (
    "d.pid, d.title, d.proposal, d.instrument, d.location, d.techniques, d.start_time,"
    " d.end_time, d.size, d.file_count, d.derived"
)
NEWEST_FIRST = "d.start_ts DESC, d.id DESC"  # newest_first's order; ties: last indexed first

#: Where a query looks for its page: the three ways :meth:`LocalCatalogue._find` chooses from.
BY_PROPOSAL = "datasets AS d INDEXED BY datasets_by_proposal"
BY_TIME = "datasets AS d INDEXED BY datasets_by_time"
BY_TEXT = "dataset_text CROSS JOIN datasets AS d ON d.id = dataset_text.rowid"

#: Up to this many readable datasets, a text search reads them all through the proposal
#: index and matches with LIKE (a few ms per 10,000); above it, the trigram index finds
#: the matches, at a cost that depends on the words and not on what the user may read.
SMALL_SHARE = 50_000
#: Proposals being indexed or waiting to be written, per worker: bounds the memory an
#: indexing run holds, whatever the size of the tree.
QUEUED_PER_WORKER = 4
#: The index writer commits after this many changed datasets, so readers see progress and
#: an interrupted run keeps what it wrote.
COMMIT_EVERY = 20_000


@dataclass(frozen=True)
class ProposalRules:
    """What ``proposals.yaml`` says about one proposal."""

    title: str = ""
    members: frozenset[str] = frozenset()
    access_groups: frozenset[str] = frozenset()
    public_date: date | None = None
    dataset_public_dates: dict[str, date] = field(default_factory=dict)


#: The rules of a proposal ``proposals.yaml`` does not list: no members, groups or public date.
#: One shared instance, as queries look it up for every row.
NO_RULES = ProposalRules()


@dataclass(frozen=True)
class IndexReport:
    """What one indexing run did, for the CLI and the tests."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped_files: tuple[str, ...] = ()
    workers: int = 1


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _as_date(value: object, where: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError as e:
        raise CatalogueUnavailable(f"{where}: {value!r} is not a date (use YYYY-MM-DD)") from e


def load_proposals(path: Path) -> dict[str, ProposalRules]:
    """Parse ``proposals.yaml``; a missing file means no proposals (and no members)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        raise CatalogueUnavailable(f"{path}: cannot read the proposals file: {e}") from e
    rules: dict[str, ProposalRules] = {}
    for pid, spec in (doc.get("proposals") or {}).items():
        spec = spec or {}
        where = f"{path}: proposals.{pid}"
        overrides = {}
        for dataset_pid, o in (spec.get("datasets") or {}).items():
            if not str(dataset_pid).startswith(f"{pid}/") or str(dataset_pid).count("/") != 2:
                raise CatalogueUnavailable(
                    f"{where}.datasets.{dataset_pid}: key each dataset by its pid,"
                    f" {pid}/<instrument>/<dataset folder>, so an override never reaches a"
                    " dataset of the same name on another instrument or proposal"
                )
            if (o or {}).get("public_date") is not None:
                overrides[str(dataset_pid)] = _as_date(
                    o["public_date"], f"{where}.datasets.{dataset_pid}.public_date"
                )
        rules[str(pid)] = ProposalRules(
            title=str(spec.get("title", "")),
            members=frozenset(str(m) for m in spec.get("members") or ()),
            access_groups=frozenset(str(g) for g in spec.get("access_groups") or ()),
            public_date=_as_date(spec.get("public_date"), f"{where}.public_date"),
            dataset_public_dates=overrides,
        )
    return rules


# -- who may read what, as SQL can use it ----------------------------------------------------


@dataclass(frozen=True)
class _Share:
    """The datasets one user may read: every dataset of ``proposals`` except the pids in
    ``hidden``, and the pids in ``extra`` (of other proposals)."""

    proposals: frozenset[str]
    hidden: frozenset[str]
    extra: frozenset[str]


@dataclass(frozen=True)
class _Grants:
    """``proposals.yaml`` arranged for one day's questions "what may this user read?".

    The same rule as :func:`~portal.catalogue.base.may_read` (member by claim or by the
    list, an access group, open data by the proposal's or the dataset's own public date),
    answered per proposal in a few set operations instead of per dataset, so a query costs
    what the user may read and not the size of the facility.
    """

    by_member: Mapping[str, frozenset[str]]
    by_group: Mapping[str, frozenset[str]]
    open_proposals: frozenset[str]
    #: Open proposals' datasets that their own public date still embargoes.
    embargoed: Mapping[str, frozenset[str]]
    #: Datasets their own public date opens, in proposals that are not open.
    released: frozenset[str]

    @classmethod
    def of(cls, rules: Mapping[str, ProposalRules], today: date) -> _Grants:
        by_member: dict[str, set[str]] = {}
        by_group: dict[str, set[str]] = {}
        open_proposals, released = set(), set()
        embargoed: dict[str, frozenset[str]] = {}
        for proposal, rule in rules.items():
            for member in rule.members:
                by_member.setdefault(member, set()).add(proposal)
            for group in rule.access_groups:
                by_group.setdefault(group, set()).add(proposal)
            is_open = rule.public_date is not None and rule.public_date <= today
            if is_open:
                open_proposals.add(proposal)
                later = {pid for pid, d in rule.dataset_public_dates.items() if d > today}
                if later:
                    embargoed[proposal] = frozenset(later)
            else:
                released |= {pid for pid, d in rule.dataset_public_dates.items() if d <= today}
        return cls(
            {k: frozenset(v) for k, v in by_member.items()},
            {k: frozenset(v) for k, v in by_group.items()},
            frozenset(open_proposals),
            embargoed,
            frozenset(released),
        )

    def share(self, user: CatalogueUser) -> _Share:
        granted = set(user.proposals)
        granted |= self.by_member.get(user.username, frozenset())
        for group in user.groups:
            granted |= self.by_group.get(group, frozenset())
        hidden = [pids for p, pids in self.embargoed.items() if p not in granted]
        proposals = frozenset(granted | self.open_proposals)
        return _Share(
            proposals,
            frozenset().union(*hidden),
            frozenset(p for p in self.released if p.partition("/")[0] not in proposals),
        )


@dataclass
class _Query:
    """A WHERE clause over ``datasets AS d`` and its parameters, built one filter at a time."""

    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, clause: str, *args: Any) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    @property
    def where(self) -> str:
        return " AND ".join(self.clauses) or "1"


def _json(values: Iterable[Any]) -> str:
    """A parameter for ``json_each``: SQLite takes a whole set in one bound value."""
    return json.dumps(list(values))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# -- indexing ------------------------------------------------------------------------------


@dataclass
class _Folder:
    """A dataset folder whose files changed since the last run: it is read again."""

    pid: str
    instrument: str
    name: str
    files: list[tuple[str, os.stat_result]]  # path relative to the folder, and its stat
    signature: str
    known: bool  # in the index already: an update, not an addition


@dataclass
class _Scanned:
    """What indexing one proposal found: walked (by the writing thread), then the changed
    datasets read (by a pool thread), then written."""

    proposal: str
    changed: list[_Folder] = field(default_factory=list)  # new and changed: to be read
    rows: list[tuple] = field(default_factory=list)  # their index rows, once read
    details: list[tuple] = field(default_factory=list)  # (thumbnail, tree JSON, pid), if any
    stale: list[str] = field(default_factory=list)  # pids whose row goes: changed or gone
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)


def _files(folder: str) -> list[tuple[str, os.stat_result]]:
    """Every regular file below ``folder`` (relative path, stat); symlinks are neither
    followed nor counted, as the mount would not show what they point to either."""
    found, pending, cut = [], [folder], len(folder) + 1
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    found.append((entry.path[cut:], entry.stat(follow_symlinks=False)))
    return found


def _signature(files: list[tuple[str, os.stat_result]]) -> str:
    """Changes when a file is added, removed or written: what makes a dataset read again."""
    return f"{len(files)}:{max((s.st_mtime_ns for _, s in files), default=0)}"


def _in_order(
    pool: ThreadPoolExecutor,
    task: Callable[[_Scanned], _Scanned],
    items: Iterable[_Scanned],
    window: int,
) -> Iterator[_Scanned]:
    """``pool.map``, but taking ``items`` only as tasks finish (at most ``window`` queued or
    done and not yet taken): a slow proposal cannot make the others pile up in memory, and
    ``items`` may be a generator that does work of its own in this thread."""
    queued: deque[Future[_Scanned]] = deque()
    for item in items:
        queued.append(pool.submit(task, item))
        if len(queued) >= window:
            yield queued.popleft().result()
    while queued:
        yield queued.popleft().result()


def _cores() -> int:
    return len(os.sched_getaffinity(0))


class LocalCatalogue(Catalogue):
    """A catalogue over a local NeXus tree, indexed into SQLite. The embedded default."""

    data_root = Unicode(
        "",
        config=True,
        help="Folder laid out <root>/<proposal>/<instrument>/<dataset>/, with proposals.yaml.",
    )
    index_path = Unicode(
        config=True,
        help="SQLite file holding the index. Default: .catalogue.sqlite inside data_root.",
    )
    index_workers = Int(
        0,
        min=0,
        config=True,
        help="Proposals indexed at once, each read by a metadata worker process of its own"
        " (as contained as one). 0: one per CPU core this process may use.",
    )
    thumbnails = Bool(
        True,
        config=True,
        help="Draw a thumbnail of each NeXus file's default plot at index time (a strided"
        " read of at most 512 x 512 values, averaged to 128 x 128), shown on /hub/datasets"
        " and the dataset pages. False: none are drawn; those already kept stay until their"
        " dataset is read again (its files change, or the index is made anew).",
    )

    @default("index_path")
    def _default_index_path(self) -> str:
        return str(Path(self.data_root) / ".catalogue.sqlite")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._threads = threading.local()  # each thread keeps its own reading connection
        self._proposals_cache: tuple[float, dict[str, ProposalRules]] | None = None
        self._grants_cache: tuple[float, date, _Grants] | None = None

    # -- the index file -----------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        """A connection to the index, created (or rebuilt, if of another version) first.

        Write-ahead logging lets the hub read while ``panosc-portal catalogue index`` writes.
        Transactions are explicit (``isolation_level=None``).
        """
        if not self.data_root:
            raise CatalogueUnavailable("LocalCatalogue.data_root is not set")
        path = Path(self.index_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=30)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                for table in _TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
                for statement in SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        return db

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, in a read transaction: one consistent view of the index
        for every statement of a query, even while an indexing run commits."""
        db = getattr(self._threads, "db", None)
        try:
            if db is None:
                db = self._threads.db = self._open()
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as e:
            self._threads.db = None  # a broken connection is not kept for the next query
            raise CatalogueUnavailable(f"catalogue index {self.index_path}: {e}") from e

    # -- indexing -----------------------------------------------------------------------

    def _subfolders(self, path: str) -> list[os.DirEntry]:
        """The folders in ``path``, by name; symlinked ones are skipped.

        Whoever can write in one proposal's tree could otherwise link another proposal's
        dataset into it and have it catalogued (and mounted) as their own.
        """
        found = []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_symlink():
                    self.log.warning("catalogue: not following the symlink %s", entry.path)
                elif entry.is_dir() and not entry.name.startswith("."):
                    found.append(entry)
        return sorted(found, key=lambda e: e.name)

    def index(self) -> IndexReport:
        """Scan the tree and bring the index up to date; only changed datasets are re-read.

        This thread walks the tree and writes the index; ``index_workers`` threads read the
        new and changed datasets of one proposal each, each with a metadata reader (and so
        worker processes) of its own. (Walking in several threads is slower: the walk is
        Python work, and they would only take turns.)
        """
        root = Path(self.data_root)
        if not root.is_dir():
            raise CatalogueUnavailable(f"catalogue data root {root} is not a readable folder")
        workers = self.index_workers or _cores()
        readers: list[MetadataReader] = []
        mine = threading.local()

        def reader() -> MetadataReader:
            if not hasattr(mine, "reader"):
                mine.reader = MetadataReader(root, thumbnails=self.thumbnails)
                readers.append(mine.reader)
            return mine.reader

        totals = dict.fromkeys(("added", "updated", "removed", "unchanged"), 0)
        skipped: list[str] = []
        db = self._open()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="catalogue-index")
        try:
            db.execute("BEGIN IMMEDIATE")
            seen, pending = set(), 0
            walked = (self._walk(db, p) for p in self._subfolders(str(root)))
            for scanned in _in_order(
                pool, lambda w: self._read(w, root, reader), walked, workers * QUEUED_PER_WORKER
            ):
                seen.add(scanned.proposal)
                self._write(db, scanned)
                for key in totals:
                    totals[key] += getattr(scanned, key)
                skipped += scanned.skipped
                pending += len(scanned.rows) + len(scanned.stale)
                if pending >= COMMIT_EVERY:
                    db.execute("COMMIT")
                    db.execute("BEGIN IMMEDIATE")
                    pending = 0
            totals["removed"] += self._remove_proposals(db, seen)
            db.execute("COMMIT")
        finally:
            pool.shutdown(cancel_futures=True)
            if db.in_transaction:
                db.execute("ROLLBACK")
            db.close()
            for each in readers:
                each.close()
        return IndexReport(**totals, skipped_files=tuple(skipped), workers=workers)

    def _walk(self, db: sqlite3.Connection, proposal: os.DirEntry) -> _Scanned:
        """One proposal's dataset folders against the index: new, changed, unchanged, gone."""
        scanned = _Scanned(proposal.name)
        known = dict(
            db.execute("SELECT pid, signature FROM datasets WHERE proposal = ?", (proposal.name,))
        )
        for instrument in self._subfolders(proposal.path):
            for folder in self._subfolders(instrument.path):
                pid = f"{proposal.name}/{instrument.name}/{folder.name}"
                files = _files(folder.path)
                signature = _signature(files)
                before = known.pop(pid, None)
                if before == signature:
                    scanned.unchanged += 1
                else:
                    scanned.changed.append(
                        _Folder(
                            pid, instrument.name, folder.name, files, signature, before is not None
                        )
                    )
        scanned.stale = [f.pid for f in scanned.changed if f.known] + list(known)
        scanned.removed = len(known)
        return scanned

    def _read(
        self, scanned: _Scanned, root: Path, reader: Callable[[], MetadataReader]
    ) -> _Scanned:
        """The index rows of a walked proposal's new and changed datasets (in a pool thread)."""
        if not scanned.changed:
            return scanned
        proposal = scanned.proposal
        metadata = self._read_metadata(proposal, scanned.changed, root, reader(), scanned.skipped)
        location = root.absolute() / proposal
        for folder, meta in zip(scanned.changed, metadata, strict=True):
            row = self._row(proposal, folder, meta, location)
            derived = derived_fields(root / folder.pid, folder)
            if derived:  # the publisher's title; the results' size and files, not the portal's
                results = [info.st_size for rel, info in folder.files if rel != DERIVED_FILE]
                title = json.loads(derived)["title"] or row[1]
                row = (row[0], title, *row[2:9], sum(results), len(results), *row[11:])
            scanned.rows.append((*row, derived))
            if meta.thumbnail or meta.tree:
                tree = json.dumps([e.as_list() for e in meta.tree])
                scanned.details.append((meta.thumbnail, tree, folder.pid))
            if folder.known:
                scanned.updated += 1
            else:
                scanned.added += 1
        return scanned

    def _read_metadata(
        self,
        proposal: str,
        folders: list[_Folder],
        root: Path,
        reader: MetadataReader,
        skipped: list[str],
    ) -> list[FileMetadata]:
        """Each folder's metadata from its first readable NeXus file (one named like the
        folder first, then the shallowest); a folder with none gets an empty one."""
        candidates = []
        for folder in folders:
            nexus = [
                rel for rel, _ in folder.files if os.path.splitext(rel)[1].lower() in NEXUS_SUFFIXES
            ]
            nexus.sort(
                key=lambda rel: (
                    Path(rel).stem != folder.name,
                    rel.count("/"),
                    os.path.basename(rel),
                )
            )
            candidates.append(
                [Path(proposal, folder.instrument, folder.name, rel) for rel in reversed(nexus)]
            )
        found = [FileMetadata() for _ in folders]
        reader.use(proposal)
        waiting = [n for n, c in enumerate(candidates) if c]
        while waiting:  # first choices of every folder in one go, then the second ones ...
            files = [candidates[n].pop() for n in waiting]
            answers = reader.read_many(files)
            retry = []
            for n, path, answer in zip(waiting, files, answers, strict=True):
                if isinstance(answer, OSError):  # not HDF5, refused, or the worker gave up
                    self.log.warning("catalogue: skipping %s: %s", root / path, answer)
                    skipped.append(str(root / path))
                    if candidates[n]:
                        retry.append(n)
                else:
                    found[n] = answer
            waiting = retry
        return found

    @staticmethod
    def _row(proposal: str, folder: _Folder, meta: dict[str, str], location: Path) -> tuple:
        """The index row of a dataset; times are stored as ISO 8601 that parses (or NULL),
        so a query turns them into datetimes without checking again."""
        start, end = _parse_time(meta.get("start_time")), _parse_time(meta.get("end_time"))
        return (
            folder.pid,
            meta.get("title") or folder.name,
            proposal,
            meta.get("instrument") or folder.instrument,
            str(location / folder.instrument / folder.name),
            " ".join(techniques.for_definition(meta.get("definition"), probe=meta.get("probe"))),
            start.isoformat() if start else None,
            end.isoformat() if end else None,
            start.timestamp() if start else None,
            sum(s.st_size for _, s in folder.files),
            len(folder.files),
            folder.signature,
        )

    @staticmethod
    def _write(db: sqlite3.Connection, scanned: _Scanned) -> None:
        """One proposal's changes: rows out, rows in, text index and technique sets along."""
        stale = [(pid,) for pid in scanned.stale]
        for table, key in (("dataset_text", "rowid"), ("dataset_details", "id")):
            db.executemany(
                f"DELETE FROM {table} WHERE {key} = (SELECT id FROM datasets WHERE pid = ?)", stale
            )
        db.executemany("DELETE FROM datasets WHERE pid = ?", stale)
        db.executemany(
            "INSERT INTO datasets (pid, title, proposal, instrument, location, techniques,"
            " start_time, end_time, start_ts, size, file_count, signature, derived)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            scanned.rows,
        )
        db.executemany(
            "INSERT INTO dataset_text (rowid, title, pid)"
            " SELECT id, title, pid FROM datasets WHERE pid = ?",
            [row[:1] for row in scanned.rows],
        )
        db.executemany(
            "INSERT OR IGNORE INTO technique_sets VALUES (?)", {row[5:6] for row in scanned.rows}
        )
        db.executemany(
            "INSERT INTO dataset_details (id, thumbnail, tree)"
            " SELECT id, ?, ? FROM datasets WHERE pid = ?",
            scanned.details,
        )

    @staticmethod
    def _remove_proposals(db: sqlite3.Connection, present: set[str]) -> int:
        """Drop the datasets of proposals no longer in the tree; how many went."""
        removed = 0
        for (proposal,) in db.execute("SELECT DISTINCT proposal FROM datasets").fetchall():
            if proposal not in present:
                for table, key in (("dataset_text", "rowid"), ("dataset_details", "id")):
                    db.execute(
                        f"DELETE FROM {table} WHERE {key} IN"
                        " (SELECT id FROM datasets WHERE proposal = ?)",
                        (proposal,),
                    )
                removed += db.execute(
                    "DELETE FROM datasets WHERE proposal = ?", (proposal,)
                ).rowcount
        return removed

    # -- queries ----------------------------------------------------------------------

    def proposals(self) -> dict[str, ProposalRules]:
        """``proposals.yaml``, reloaded whenever the file changes."""
        path = Path(self.data_root) / "proposals.yaml"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if self._proposals_cache is None or self._proposals_cache[0] != mtime:
            self._proposals_cache = (mtime, load_proposals(path))
        return self._proposals_cache[1]

    def _grants(self, rules: dict[str, ProposalRules], today: date) -> _Grants:
        """:class:`_Grants` of these rules today, kept until either changes."""
        cached = self._grants_cache
        mtime = self._proposals_cache[0] if self._proposals_cache else -1
        if cached is None or cached[0] != mtime or cached[1] != today:
            cached = self._grants_cache = (mtime, today, _Grants.of(rules, today))
        return cached[2]

    @staticmethod
    def _checked(
        rows: Iterable[tuple], user: CatalogueUser, rules: dict[str, ProposalRules], today: date
    ) -> tuple[list[Dataset], list[str]]:
        """The rows as datasets, each put to :func:`may_read`, and the pids it refused: an
        index query only narrows what is read, the rule decides what is handed out."""
        found, refused = [], []
        parse = datetime.fromisoformat  # the index stores only times that parse
        split: dict[str, tuple[str, ...]] = {}  # a few techniques values, in many rows
        for pid, title, proposal, instrument, location, techs, start, end, size, count, der in rows:
            rule = rules.get(proposal, NO_RULES)
            public = rule.dataset_public_dates.get(pid, rule.public_date)
            extra: dict[str, Any] = {}
            if der:
                extra = json.loads(der)
                public = derived_public_date(public, extra["inputs"], rules)
            if (ids := split.get(techs)) is None:
                ids = split[techs] = tuple(techs.split())
            dataset = Dataset(
                pid=pid,
                title=title,
                proposal=proposal,
                instrument=instrument,
                location=location,
                techniques=ids,
                start_time=parse(start) if start else None,
                end_time=parse(end) if end else None,
                public_date=public,
                size=size,
                file_count=count,
                access_groups=rule.access_groups,
                inputs=tuple(extra.get("inputs", ())),
                software=tuple(extra.get("software", ())),
                description=extra.get("description", ""),
            )
            if may_read(dataset, user, rule.members, today):
                found.append(dataset)
            else:
                refused.append(pid)
        return found, refused

    def _share_query(self, db: sqlite3.Connection, share: _Share, proposal: str) -> _Query | None:
        """The WHERE clause "datasets this share reads (of ``proposal``, if given)", as the
        proposal index can answer it; ``None`` when that is nothing."""
        extra = [p for p in share.extra if not proposal or p.partition("/")[0] == proposal]
        extra_rows = db.execute(
            "SELECT id, proposal FROM datasets WHERE pid IN (SELECT value FROM json_each(?))",
            (_json(extra),),
        ).fetchall()
        whole = share.proposals & {proposal} if proposal else share.proposals
        scope = whole | {p for _, p in extra_rows}
        if not scope:
            return None
        query = _Query()
        query.add("d.proposal IN (SELECT value FROM json_each(?))", _json(scope))
        if extra_rows:
            query.add(
                "(d.proposal IN (SELECT value FROM json_each(?))"
                " OR d.id IN (SELECT value FROM json_each(?)))",
                _json(whole),
                _json([i for i, _ in extra_rows]),
            )
        if share.hidden:
            query.add(
                "d.id NOT IN (SELECT id FROM datasets WHERE pid IN"
                " (SELECT value FROM json_each(?)))",
                _json(share.hidden),
            )
        return query

    def _find(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int | None = None,
        offset: int = 0,
        count: bool = False,
    ) -> tuple[list[Dataset], int]:
        """The page of matching datasets ``user`` may read, newest first, and (``count``)
        how many there are in all (else 0).

        The page is found one of three ways, chosen by how many datasets the user may read
        (counted in the proposal index, only as far as the choice needs unless the total
        is wanted): through the proposal index when they are few; newest first through the
        time index, stopping at the page, when they are a good part of the facility; and
        for text, by the trigram index when they are many. Text matches a substring of the
        title or the pid, letters in either case (beyond ASCII, only the trigram index
        folds case).
        """
        if (limit is not None and limit < 0) or offset < 0:
            raise ValueError("limit and offset must not be negative")
        wanted = techniques.descendants(techniques.get(technique).pid) if technique else set()
        rules = self.proposals()
        today = datetime.now(UTC).date()
        share = self._grants(rules, today).share(user)
        with self._snapshot() as db:
            query = self._share_query(db, share, proposal)
            if query is None:
                return [], 0
            if technique:
                sets = [t for (t,) in db.execute("SELECT techniques FROM technique_sets")]
                query.add(
                    "d.techniques IN (SELECT value FROM json_each(?))",
                    _json([t for t in sets if wanted.intersection(t.split())]),
                )
            if instrument:
                query.add("d.instrument = ? COLLATE NOCASE", instrument)

            def counted(source: str, cap: int = -1) -> int:
                inner = f"SELECT 1 FROM {source} WHERE {query.where} LIMIT {cap}"
                return db.execute(f"SELECT count(*) FROM ({inner})", query.args).fetchone()[0]

            source, total = BY_PROPOSAL, 0
            if text:
                if len(text) >= 3 and counted(BY_PROPOSAL, SMALL_SHARE + 1) > SMALL_SHARE:
                    # a phrase of trigrams: the text as a substring, its quotes doubled
                    query.clauses.insert(0, "dataset_text MATCH ?")
                    query.args.insert(0, '"' + text.replace('"', '""') + '"')
                    source = BY_TEXT
                else:
                    like = "(d.title LIKE ? ESCAPE '\\' OR d.pid LIKE ? ESCAPE '\\')"
                    query.add(like, _like(text), _like(text))
            elif limit is not None:
                # The time index walks about (offset + limit) * size / readable entries to
                # fill the page; the proposal index reads all readable ones and sorts them.
                size = db.execute("SELECT max(id) FROM datasets").fetchone()[0] or 0
                enough = math.isqrt(2 * (offset + limit) * size)
                readable = counted(BY_PROPOSAL, -1 if count else enough + 1)
                total = readable if count else 0
                if readable > enough:
                    source = BY_TIME
            page = f"{source} WHERE {query.where} ORDER BY {NEWEST_FIRST}"
            if text and count:  # one pass over the matches: the page's ids and their number
                hits = db.execute(
                    f"SELECT d.id, count(*) OVER () FROM {page} LIMIT ? OFFSET ?",
                    [*query.args, limit, offset],
                ).fetchall()
                total = hits[0][1] if hits else (counted(source) if offset else 0)  # past the end
                page = "datasets AS d WHERE d.id IN (SELECT value FROM json_each(?))"
                page += f" ORDER BY {NEWEST_FIRST}"
                query.args = [_json(i for i, _ in hits)]
            elif limit is not None:  # no LIMIT at all for everything: LIMIT -1 costs a tenth more
                page += " LIMIT ? OFFSET ?"
                query.args += [limit, offset]
                if source != BY_TIME:  # order the matches' ids, read only the page's rows
                    page = f"datasets AS d WHERE d.id IN (SELECT d.id FROM {page})"
                    page += f" ORDER BY {NEWEST_FIRST}"
            rows = db.execute(f"SELECT {COLUMNS} FROM {page}", query.args)
            # Row by row, not fetchall(): each row is used while hot and freed at once, a
            # third faster for 10,000 rows than holding them all.
            found, refused = self._checked(rows, user, rules, today)
        # A derived dataset in an open proposal stays embargoed while one of its inputs is
        # (derived_public_date): the proposal-level query lets it through, the rule does not.
        refused = [p for p in refused if p.split("/")[1:2] != ["derived"]]
        if refused:  # the query and the rule disagree: a bug, and never a leak
            self.log.error("catalogue: the index query let through %s; withheld", refused)
        return found, total

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self._find(user)[0]

    def member_proposals(self, user: CatalogueUser) -> frozenset[str]:
        listed = {p for p, rule in self.proposals().items() if user.username in rule.members}
        return user.proposals | listed

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        """By primary key, then the rule on that one row: the same cost for everyone."""
        rules = self.proposals()
        with self._snapshot() as db:
            rows = db.execute(f"SELECT {COLUMNS} FROM datasets AS d WHERE d.pid = ?", (pid,))
            found, _ = self._checked(rows, user, rules, datetime.now(UTC).date())
        if not found:
            raise DatasetNotFound(pid)
        return found[0]

    def _details(self, pid: str, column: str) -> Any:
        """One column of a dataset's details row (``None`` when it has none)."""
        with self._snapshot() as db:
            found = db.execute(
                f"SELECT x.{column} FROM datasets AS d JOIN dataset_details AS x ON x.id = d.id"
                " WHERE d.pid = ?",
                (pid,),
            ).fetchone()
        return found[0] if found else None

    def thumbnail(self, dataset: Dataset, user: CatalogueUser) -> Thumbnail | None:
        png = self._details(dataset.pid, "thumbnail")
        return Thumbnail(bytes(png)) if png else None

    def nexus_tree(self, dataset: Dataset, user: CatalogueUser) -> tuple[TreeEntry, ...]:
        """The summary the indexer checked (:func:`portal.catalogue.tree.checked`)."""
        stored = self._details(dataset.pid, "tree")
        return tuple(
            TreeEntry(p, k, c, tuple(s) if s is not None else None, t)
            for p, k, c, s, t in json.loads(stored or "[]")
        )

    def search(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> list[Dataset]:
        return self._find(
            user,
            text=text,
            technique=technique,
            proposal=proposal,
            instrument=instrument,
            limit=limit,
            offset=offset,
        )[0]

    def search_page(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> DatasetPage:
        found, total = self._find(
            user,
            text=text,
            technique=technique,
            proposal=proposal,
            instrument=instrument,
            limit=limit,
            offset=offset,
            count=True,
        )
        return DatasetPage(tuple(found), total, offset, limit)


def derived_fields(folder: Path, scanned: _Folder) -> str | None:
    """The ``derived`` column (JSON) of a dataset folder holding the portal's
    :data:`DERIVED_FILE` at its top, else ``None``: what makes it published results."""
    if not any(rel == DERIVED_FILE for rel, _ in scanned.files):
        return None
    try:  # never through a link: the file is the portal's, in the folder itself
        fd = os.open(folder / DERIVED_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(MAX_DERIVED_BYTES))
        inputs = [str(p) for p in doc.get("inputs") or []]
        software = [str(s) for s in doc.get("software") or []]
        return json.dumps(
            {
                "inputs": inputs,
                "software": software,
                "description": str(doc.get("description") or ""),
                "title": str(doc.get("title") or ""),
            }
        )
    except (OSError, ValueError, AttributeError):
        return None


def derived_public_date(
    own: date | None, inputs: Iterable[str], rules: Mapping[str, ProposalRules]
) -> date | None:
    """A derived dataset is embargoed like its inputs: public on the latest of their public
    dates and its own proposal's, never while any of them has none."""
    dates = [own]
    for pid in inputs:
        rule = rules.get(pid.partition("/")[0], NO_RULES)
        dates.append(rule.dataset_public_dates.get(pid, rule.public_date))
    if any(d is None for d in dates):
        return None
    return max(d for d in dates if d is not None)


def index_tree(data_root: str | os.PathLike, index_path: str | None = None) -> IndexReport:
    """Index ``data_root`` (the ``panosc-portal catalogue index`` command)."""
    kwargs = {"data_root": str(data_root)}
    if index_path:
        kwargs["index_path"] = str(index_path)
    return LocalCatalogue(**kwargs).index()


__all__ = ["IndexReport", "LocalCatalogue", "ProposalRules", "index_tree"]
