"""The embedded catalogue: a SQLite index of a NeXus data tree laid out like a facility's.

The tree is ``<root>/<proposal>/<instrument>/<dataset>/`` and ``<root>/proposals.yaml`` says
who is a member of which proposal and when its data becomes public. Dataset metadata is
read from the NeXus files once, at index time, by an unprivileged worker that refuses
anything stored outside the file (:mod:`portal.catalogue.nexus`); membership and public
dates are read from ``proposals.yaml`` at query time (reloaded when it changes), so revoking
a member takes effect at the next spawn without re-indexing.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import yaml
from traitlets import Unicode, default

from portal.catalogue import techniques
from portal.catalogue.base import (
    Catalogue,
    CatalogueUnavailable,
    DatasetNotFound,
    may_read,
    newest_first,
)
from portal.catalogue.model import CatalogueUser, Dataset
from portal.catalogue.nexus import MetadataReader

NEXUS_SUFFIXES = (".nxs", ".nx5", ".h5", ".hdf5", ".hdf")

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    pid TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    proposal TEXT NOT NULL,
    instrument TEXT NOT NULL,
    location TEXT NOT NULL,
    techniques TEXT NOT NULL,
    start_time TEXT,
    end_time TEXT,
    size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    signature TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_proposal ON datasets (proposal);
"""


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

    @default("index_path")
    def _default_index_path(self) -> str:
        return str(Path(self.data_root) / ".catalogue.sqlite")

    _proposals_cache: tuple[float, dict[str, ProposalRules]] | None = None

    # -- indexing ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self.data_root:
            raise CatalogueUnavailable("LocalCatalogue.data_root is not set")
        path = Path(self.index_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        db.executescript(SCHEMA)
        return db

    def _dataset_dirs(self) -> Iterator[tuple[str, str, Path]]:
        """Every ``<proposal>/<instrument>/<dataset>`` folder; symlinked folders are skipped.

        Whoever can write in one proposal's tree could otherwise link another proposal's
        dataset into it and have it catalogued (and mounted) as their own.
        """

        def folders(parent: Path) -> list[Path]:
            found = []
            for path in sorted(parent.iterdir()):
                if path.is_symlink():
                    self.log.warning("catalogue: not following the symlink %s", path)
                elif path.is_dir() and not path.name.startswith("."):
                    found.append(path)
            return found

        for proposal in folders(Path(self.data_root)):
            for instrument in folders(proposal):
                for folder in folders(instrument):
                    yield proposal.name, instrument.name, folder

    def index(self) -> IndexReport:
        """Scan the tree and bring the index up to date; only changed datasets are re-read."""
        root = Path(self.data_root)
        if not root.is_dir():
            raise CatalogueUnavailable(f"catalogue data root {root} is not a readable folder")
        added = updated = unchanged = 0
        skipped: list[str] = []
        with self._connect() as db, MetadataReader(root) as reader:
            known = dict(db.execute("SELECT pid, signature FROM datasets"))
            seen: set[str] = set()
            for proposal, instrument, folder in self._dataset_dirs():
                pid = f"{proposal}/{instrument}/{folder.name}"
                seen.add(pid)
                files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
                stats = [p.stat() for p in files]
                signature = f"{len(files)}:{max((s.st_mtime_ns for s in stats), default=0)}"
                if known.get(pid) == signature:
                    unchanged += 1
                    continue
                meta: dict[str, str] = {}
                for nexus in sorted(
                    (p for p in files if p.suffix.lower() in NEXUS_SUFFIXES),
                    key=lambda p: (p.stem != folder.name, len(p.parts), p.name),
                ):
                    try:
                        reader.use(proposal)
                        meta = reader.read(nexus.relative_to(root))
                        break
                    except OSError as e:  # not HDF5, refused, or the worker gave up
                        self.log.warning("catalogue: skipping %s: %s", nexus, e)
                        skipped.append(str(nexus))
                row = (
                    pid,
                    meta.get("title") or folder.name,
                    proposal,
                    meta.get("instrument") or instrument,
                    str(folder.absolute()),
                    " ".join(
                        techniques.for_definition(meta.get("definition"), probe=meta.get("probe"))
                    ),
                    meta.get("start_time"),
                    meta.get("end_time"),
                    sum(s.st_size for s in stats),
                    len(files),
                    signature,
                )
                db.execute("INSERT OR REPLACE INTO datasets VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)
                if pid in known:
                    updated += 1
                else:
                    added += 1
            gone = set(known) - seen
            db.executemany("DELETE FROM datasets WHERE pid = ?", [(p,) for p in gone])
        return IndexReport(added, updated, len(gone), unchanged, tuple(skipped))

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

    @contextmanager
    def _index(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connect()
        except sqlite3.Error as e:
            raise CatalogueUnavailable(f"catalogue index {self.index_path}: {e}") from e
        try:
            yield db
        finally:
            db.close()

    def _dataset(self, row: tuple, rules: dict[str, ProposalRules]) -> Dataset:
        pid, title, proposal, instrument, location, techs, start, end, size, count = row
        rule = rules.get(proposal, NO_RULES)
        return Dataset(
            pid=pid,
            title=title,
            proposal=proposal,
            instrument=instrument,
            location=location,
            techniques=tuple(techs.split()),
            start_time=_parse_time(start),
            end_time=_parse_time(end),
            public_date=rule.dataset_public_dates.get(pid, rule.public_date),
            size=size,
            file_count=count,
            access_groups=rule.access_groups,
        )

    def _visible_proposals(
        self,
        db: sqlite3.Connection,
        user: CatalogueUser,
        rules: dict[str, ProposalRules],
        today: date,
    ) -> list[str]:
        """The proposals in which ``user`` may read at least one dataset, by the rule itself.

        Each proposal is put to :func:`may_read` once, as a probe carrying its earliest
        public date, and only those proposals' rows are read and built into datasets, so a
        query costs what the user can see, not the size of the facility. ``may_read`` still
        decides every dataset afterwards.
        """
        visible = []
        for (proposal,) in db.execute("SELECT DISTINCT proposal FROM datasets"):
            rule = rules.get(proposal, NO_RULES)
            dates = [d for d in (rule.public_date, *rule.dataset_public_dates.values()) if d]
            probe = Dataset(
                pid="",
                title="",
                proposal=proposal,
                instrument="",
                location="",
                public_date=min(dates, default=None),
                access_groups=rule.access_groups,
            )
            if may_read(probe, user, rule.members, today):
                visible.append(proposal)
        return visible

    def _readable(
        self, user: CatalogueUser, clauses: Sequence[str] = (), args: tuple = ()
    ) -> list[Dataset]:
        """The datasets ``user`` may read among those matching every SQL clause, newest first."""
        rules = self.proposals()
        today = datetime.now(UTC).date()
        found = []
        with self._index() as db:
            visible = json.dumps(self._visible_proposals(db, user, rules, today))
            where = " AND ".join(["proposal IN (SELECT value FROM json_each(?))", *clauses])
            rows = db.execute(
                "SELECT pid, title, proposal, instrument, location, techniques, start_time,"
                " end_time, size, file_count FROM datasets WHERE " + where,
                (visible, *args),
            )
            for row in rows:
                dataset = self._dataset(row, rules)
                if may_read(dataset, user, rules.get(dataset.proposal, NO_RULES).members, today):
                    found.append(dataset)
        found = newest_first(found)
        return found

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self._readable(user)

    def member_proposals(self, user: CatalogueUser) -> frozenset[str]:
        listed = {p for p, rule in self.proposals().items() if user.username in rule.members}
        return user.proposals | listed

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        found = self._readable(user, ["pid = ?"], (pid,))
        if not found:
            raise DatasetNotFound(pid)
        return found[0]

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
        clauses, args = [], []
        if proposal:
            clauses.append("proposal = ?")
            args.append(proposal)
        if instrument:
            clauses.append("instrument = ? COLLATE NOCASE")
            args.append(instrument)
        if text:
            clauses.append("(title || ' ' || pid) LIKE ? ESCAPE '\\'")
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}%")
        found = self._readable(user, clauses, tuple(args))
        if technique:
            wanted = techniques.descendants(techniques.get(technique).pid)
            found = [d for d in found if wanted.intersection(d.techniques)]
        return found[offset : offset + limit]


def index_tree(data_root: str | os.PathLike, index_path: str | None = None) -> IndexReport:
    """Index ``data_root`` (the ``panosc-portal catalogue index`` command)."""
    kwargs = {"data_root": str(data_root)}
    if index_path:
        kwargs["index_path"] = str(index_path)
    return LocalCatalogue(**kwargs).index()


__all__ = ["IndexReport", "LocalCatalogue", "ProposalRules", "index_tree"]
