"""The local NeXus catalogue: who sees what on the demo's sample data, re-indexing, and on a
tree of many small datasets, parallel indexing, paging, counting and literal search."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import h5py
import pytest

from portal.catalogue import (
    Catalogue,
    CatalogueUser,
    Dataset,
    DatasetNotFound,
    local,
    nexus,
    techniques,
)
from portal.catalogue.base import DatasetPage, may_read, newest_first
from portal.catalogue.local import NO_RULES, LocalCatalogue
from portal.catalogue.nexus import MetadataReader
from portal.demo.sampledata import DEMO_USERS, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility") / "data"
    generate(root)
    return root


@pytest.fixture
def catalogue(data: Path, tmp_path: Path) -> LocalCatalogue:
    cat = LocalCatalogue(data_root=str(data), index_path=str(tmp_path / "index.sqlite"))
    cat.index()
    return cat


def demo_user(name: str) -> CatalogueUser:
    claims = DEMO_USERS[name]
    return CatalogueUser(
        name, claims["sub"], frozenset(claims["groups"]), frozenset(claims["proposals"])
    )


def proposals_seen(catalogue: LocalCatalogue, name: str) -> set[str]:
    return {d.proposal for d in catalogue.datasets_for(demo_user(name))}


def test_each_demo_user_sees_own_proposals_and_open_data(catalogue: LocalCatalogue) -> None:
    assert proposals_seen(catalogue, "alice") == {"MA1234", "ES1001", "OD2019"}
    assert proposals_seen(catalogue, "bob") == {"ES1001", "IH2002", "IN5678", "OD2019", "MA1234"}
    assert proposals_seen(catalogue, "dave") == {"OD2019", "MA1234"}
    # MA1234's NeXus tour is open data on its own, its XRF map is not:
    dave_pids = {d.pid for d in catalogue.datasets_for(demo_user("dave"))}
    assert "MA1234/ID21/nexus_tour_0001" in dave_pids
    assert "MA1234/ID21/xrf_map_0001" not in dave_pids


def test_metadata_comes_from_the_nexus_files(catalogue: LocalCatalogue) -> None:
    xrf = catalogue.get("MA1234/ID21/xrf_map_0001", demo_user("alice"))
    assert xrf.instrument == "ID21" and xrf.start_time is not None
    assert "x-ray fluorescence" in xrf.technique_names
    assert xrf.file_count >= 1 and xrf.size > 100_000
    assert Path(xrf.location).is_dir()


def test_embargoed_is_indistinguishable_from_unknown(catalogue: LocalCatalogue) -> None:
    alice = demo_user("alice")
    with pytest.raises(DatasetNotFound) as embargoed:
        catalogue.get("IH2002/ID19/phantom_tomo_0001", alice)
    with pytest.raises(DatasetNotFound) as unknown:
        catalogue.get("IH2002/ID19/no_such_dataset", alice)
    assert str(embargoed.value).replace("phantom_tomo_0001", "X") == str(unknown.value).replace(
        "no_such_dataset", "X"
    )


def test_search_by_parent_technique_finds_descendants(catalogue: LocalCatalogue) -> None:
    bob = demo_user("bob")
    found = {d.pid for d in catalogue.search(bob, technique="x-ray scattering")}
    assert found == {"ES1001/ID22/ceo2_powder_0001", "OD2019/ID02/agbh_saxs_0001"}
    assert [d.pid for d in catalogue.search(bob, text="phantom")] == [
        "IH2002/ID19/phantom_tomo_0001"
    ]
    assert catalogue.search(demo_user("alice"), text="phantom") == []


def test_revoking_membership_applies_without_reindex(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    cat = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "i.sqlite"))
    cat.index()
    bob = CatalogueUser("bob")  # membership from proposals.yaml only, no claims
    assert "IH2002" in {d.proposal for d in cat.datasets_for(bob)}
    text = (root / "proposals.yaml").read_text()
    (root / "proposals.yaml").write_text(text.replace("members: [bob]", "members: []"))
    assert "IH2002" not in {d.proposal for d in cat.datasets_for(bob)}


def test_incremental_reindex_and_bad_files(data: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    cat = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "i.sqlite"))
    first = cat.index()
    assert first.added == 7 and first.unchanged == 0
    again = cat.index()
    assert again.added == again.updated == again.removed == 0 and again.unchanged == 7

    broken = root / "MA1234/ID21/broken_0001"
    broken.mkdir()
    (broken / "broken_0001.nxs").write_bytes(b"this is not HDF5")
    shutil.rmtree(root / "IN5678/IN5/chain_sqw_0001")
    report = cat.index()
    assert (report.added, report.removed, report.unchanged) == (1, 1, 6)
    assert report.skipped_files == (str(broken / "broken_0001.nxs"),)
    owner = CatalogueUser("alice", proposals=frozenset({"MA1234"}))
    assert cat.get("MA1234/ID21/broken_0001", owner).title == "broken_0001"


# -- a facility of many small datasets: parallel indexing, re-indexing, paging, searching --

PAST, FUTURE = date(2020, 1, 1), date(2099, 1, 1)
START = datetime(2024, 3, 1, tzinfo=UTC)
DEFINITIONS = ["NXsas", "NXtomo", "NXfluo", "NXmonopd"]
#: Titles a search must take literally: LIKE's and FTS5's special characters, quotes, Unicode.
ODD_TITLES = [
    "50% done",
    "under_score",
    'say "hi"',
    "back\\slash",
    "it's",
    "NEAR(a b) AND c*",
    "Ünïcode résumé",
]
PROPOSALS_YAML = f"""
proposals:
  BIG: {{members: [ann], public_date: {FUTURE}}}
  GRP: {{access_groups: [staff]}}
  OPEN:
    members: [olga]
    public_date: {PAST}
    datasets: {{OPEN/ID02/scan_03: {{public_date: {FUTURE}}}}}
  EMB:
    public_date: {FUTURE}
    datasets: {{EMB/ID21/scan_01: {{public_date: {PAST}}}}}
"""
#: proposal -> (instrument, datasets); UNLISTED is in no proposals.yaml: claims only.
TREE = {"BIG": ("ID22", 14), "GRP": ("ICON", 9), "OPEN": ("ID02", 6), "EMB": ("ID21", 4)}
TREE["UNLISTED"] = ("ID19", 3)
USERS = {
    "ann": CatalogueUser("ann"),  # member of BIG by proposals.yaml
    "claims": CatalogueUser("cid", proposals=frozenset({"UNLISTED", "BIG"})),
    "staff": CatalogueUser("sam", groups=frozenset({"staff"})),
    "olga": CatalogueUser("olga"),  # member of OPEN: reads its embargoed dataset too
    "outsider": CatalogueUser("nobody"),
}
EVERYONE = CatalogueUser("all", proposals=frozenset(TREE))


def write_nexus(path: Path, title: str, definition: str, start: datetime | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["title"] = title
        entry["definition"] = definition
        if start is not None:
            entry["start_time"] = start.isoformat()


@pytest.fixture(scope="module")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 datasets in 5 proposals: open, embargoed, group-granted, per-dataset dates, one
    proposal only identity claims grant; odd titles, equal and missing start times."""
    root = tmp_path_factory.mktemp("many") / "data"
    n = 0
    for proposal, (instrument, count) in TREE.items():
        for i in range(count):
            name = f"scan_{i:02d}"
            title = ODD_TITLES[n % len(ODD_TITLES)] if n % 3 == 0 else f"Sample {n} of {proposal}"
            start = None if n % 11 == 5 else START + timedelta(hours=n % 17)  # ties, undated
            path = root / proposal / instrument / name / f"{name}.nxs"
            write_nexus(path, title, DEFINITIONS[n % len(DEFINITIONS)], start)
            n += 1
    (root / "proposals.yaml").write_text(PROPOSALS_YAML)
    return root


@pytest.fixture(scope="module")
def many(facility: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalCatalogue:
    index = tmp_path_factory.mktemp("many-index") / "index.sqlite"
    cat = LocalCatalogue(data_root=str(facility), index_path=str(index))
    cat.index()
    return cat


def oracle(catalogue: LocalCatalogue, user: CatalogueUser) -> set[str]:
    """The pids ``user`` may read, by base.may_read on every folder of the tree: what the
    index's answers are checked against, computed without the index."""
    rules, today = catalogue.proposals(), datetime.now(UTC).date()
    readable = set()
    for folder in Path(catalogue.data_root).glob("*/*/*"):
        pid = "/".join(folder.parts[-3:])
        proposal = folder.parts[-3]
        rule = rules.get(proposal, NO_RULES)
        probe = Dataset(
            pid=pid,
            title="",
            proposal=proposal,
            instrument="",
            location="",
            public_date=rule.dataset_public_dates.get(pid, rule.public_date),
            access_groups=rule.access_groups,
        )
        if may_read(probe, user, rule.members, today):
            readable.add(pid)
    return readable


def matches(dataset: Dataset, text: str, technique: str) -> bool:
    """search's filters, spelled out in Python (ASCII case folded, as in the index)."""
    folded = text.lower()
    if text and folded not in dataset.title.lower() and folded not in dataset.pid.lower():
        return False
    wanted = techniques.descendants(techniques.get(technique).pid) if technique else set()
    return not technique or bool(wanted.intersection(dataset.techniques))


def test_parallel_index_gives_the_rows_the_files_say(facility: Path, tmp_path: Path) -> None:
    indexes = {}
    for workers in (1, 3):
        cat = LocalCatalogue(
            data_root=str(facility),
            index_path=str(tmp_path / f"{workers}.sqlite"),
            index_workers=workers,
        )
        report = cat.index()
        assert (report.added, report.skipped_files, report.workers) == (36, (), workers)
        indexes[workers] = cat.datasets_for(EVERYONE)
    assert indexes[1] == indexes[3]  # every field, in the same order
    found = {d.pid: d for d in indexes[3]}
    assert found["BIG/ID22/scan_00"].title == ODD_TITLES[0]
    assert found["BIG/ID22/scan_01"].title == "Sample 1 of BIG"
    assert found["BIG/ID22/scan_01"].start_time == START + timedelta(hours=1)
    assert found["BIG/ID22/scan_05"].start_time is None
    assert found["GRP/ICON/scan_00"].technique_names == ("x-ray fluorescence",)  # NXfluo
    assert found["OPEN/ID02/scan_00"].location == str(facility / "OPEN/ID02/scan_00")
    assert [d.pid for d in indexes[3]] == [d.pid for d in newest_first(indexes[3])]
    assert indexes[3][-1].start_time is None  # undated last


def test_reindex_reads_only_what_changed(
    facility: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    shutil.copytree(facility, root)
    cat = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "i.sqlite"))
    cat.index()
    read: list[str] = []
    original = MetadataReader.read_many

    def spy(reader: MetadataReader, relatives: list[Path]) -> list:
        read.extend(str(r) for r in relatives)
        return original(reader, relatives)

    monkeypatch.setattr(MetadataReader, "read_many", spy)
    again = cat.index()
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 36)
    assert read == []

    later = time.time() + 10  # a modification time no clock tick can leave unchanged
    retitled = root / "BIG/ID22/scan_02/scan_02.nxs"
    write_nexus(retitled, "A new title", "NXsas", START)
    os.utime(retitled, (later, later))
    touched = root / "GRP/ICON/scan_04/scan_04.nxs"
    os.utime(touched, (later, later))
    write_nexus(root / "EMB/ID21/scan_09/scan_09.nxs", "Fresh", "NXtomo", START)
    shutil.rmtree(root / "UNLISTED")
    report = cat.index()
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 2, 3, 31)
    assert sorted(read) == [
        "BIG/ID22/scan_02/scan_02.nxs",
        "EMB/ID21/scan_09/scan_09.nxs",
        "GRP/ICON/scan_04/scan_04.nxs",
    ]
    assert cat.get("BIG/ID22/scan_02", EVERYONE).title == "A new title"
    assert cat.search(EVERYONE, text="a new title")[0].pid == "BIG/ID22/scan_02"
    assert not any(d.proposal == "UNLISTED" for d in cat.datasets_for(EVERYONE))


def test_symlinked_folders_are_not_indexed(facility: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(facility, root)
    (root / "BIG/ID22/linked_scan").symlink_to(root / "GRP/ICON/scan_00")
    (root / "LINKED").symlink_to(root / "GRP")
    cat = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "i.sqlite"))
    assert cat.index().added == 36
    everything = CatalogueUser("all", proposals=frozenset({*TREE, "LINKED"}))
    pids = {d.pid for d in cat.datasets_for(everything)}
    assert "BIG/ID22/linked_scan" not in pids
    assert not any(p.startswith("LINKED/") for p in pids)


@pytest.mark.parametrize("trigrams", [False, True], ids=["like", "trigram-index"])
@pytest.mark.parametrize("who", list(USERS))
def test_pages_and_totals_hold_exactly_what_the_user_may_read(
    many: LocalCatalogue, who: str, trigrams: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every page and every total, for each kind of user, under every query plan: only
    datasets base.may_read allows, all of them, newest first, each once."""
    if trigrams:  # as for a user who may read more than SMALL_SHARE datasets
        monkeypatch.setattr(local, "SMALL_SHARE", 0)
    user = USERS[who]
    everything = many.datasets_for(user)
    assert {d.pid for d in everything} == oracle(many, user)
    assert [d.pid for d in everything] == [d.pid for d in newest_first(everything)]
    for text, technique in [("", ""), ("sample", ""), ("", "x-ray scattering"), ("an", "")]:
        expected = [d.pid for d in everything if matches(d, text, technique)]
        for limit in (1, 4, 50):
            paged, offset = [], 0
            while True:
                page = many.search_page(
                    user, text=text, technique=technique, limit=limit, offset=offset
                )
                assert page.total == len(expected) and (page.offset, page.limit) == (offset, limit)
                if not page.datasets:
                    break
                assert len(page.datasets) <= limit
                paged += [d.pid for d in page.datasets]
                offset += limit
            assert paged == expected, (text, technique, limit)
        plain = many.search(user, text=text, technique=technique, limit=3, offset=1)
        assert [d.pid for d in plain] == expected[1:4]


def test_a_dataset_embargoed_by_its_own_date_is_in_no_page_or_total(
    many: LocalCatalogue,
) -> None:
    hidden = "OPEN/ID02/scan_03"  # in an open proposal, embargoed by its own date
    released = "EMB/ID21/scan_01"  # in an embargoed proposal, opened by its own date
    outsider, olga = USERS["outsider"], USERS["olga"]
    assert oracle(many, outsider) == {f"OPEN/ID02/scan_{i:02d}" for i in range(6)} - {hidden} | {
        released
    }
    page = many.search_page(outsider, limit=100)
    assert hidden not in {d.pid for d in page.datasets} and page.total == 6
    assert many.search_page(outsider, proposal="OPEN").total == 5
    assert many.search_page(outsider, proposal="EMB").total == 1
    assert many.search_page(olga, proposal="OPEN").total == 6
    with pytest.raises(DatasetNotFound):
        many.get(hidden, outsider)
    assert many.get(released, outsider).pid == released


def test_search_takes_the_text_literally(
    many: LocalCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    for trigrams in (False, True):
        monkeypatch.setattr(local, "SMALL_SHARE", 0 if trigrams else 50_000)
        everything = many.datasets_for(EVERYONE)
        for text in ["%", "_", "\\", '"', "'", "*", "50%", "r_s", 'y "h', "AND c*", "NEAR(", "Ünï"]:
            expected = [d.pid for d in everything if matches(d, text, "")]
            found = many.search_page(EVERYONE, text=text, limit=100)
            assert [d.pid for d in found.datasets] == expected, (text, trigrams)
            assert found.total == len(expected)
        assert (
            len(many.search(EVERYONE, text="50%"))
            == len([d for d in everything if "50%" in d.title])
            > 0
        )


def test_paging_arguments_are_checked(many: LocalCatalogue) -> None:
    with pytest.raises(ValueError):
        many.search_page(EVERYONE, offset=-1)
    with pytest.raises(ValueError):
        many.search_page(EVERYONE, limit=-5)
    assert many.search_page(EVERYONE, offset=1000) == DatasetPage((), 36, 1000, 50)
    assert many.search_page(EVERYONE, limit=0).total == 36


class Listed(Catalogue):
    """A backend with no paging of its own, like the HTTP ones: search returns a slice."""

    def __init__(self, datasets: list[Dataset]) -> None:
        super().__init__()
        self.datasets = datasets

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self.datasets

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        raise DatasetNotFound(pid)

    def search(self, user: CatalogueUser, *, text: str = "", limit: int = 50, offset: int = 0, **_):
        found = [d for d in self.datasets if text in d.title]
        return found[offset : offset + limit]


def test_the_default_search_page_counts_what_search_finds() -> None:
    datasets = [Dataset(f"P/I/{n}", f"scan {n % 3}", "P", "I", "") for n in range(10)]
    page = Listed(datasets).search_page(EVERYONE, text="scan 1", limit=2, offset=1)
    assert [d.pid for d in page.datasets] == ["P/I/4", "P/I/7"]
    assert (page.total, page.offset, page.limit) == (3, 1, 2)
    with pytest.raises(ValueError):
        Listed(datasets).search_page(EVERYONE, offset=-1)


def test_a_worker_that_gives_up_mid_batch_costs_one_file(
    facility: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is killed on the file it did not answer; the rest of the batch goes to a
    fresh worker, and a batch never mixes proposals."""
    files = [Path(f"BIG/ID22/scan_{i:02d}/scan_{i:02d}.nxs") for i in range(5)]
    answers = 0
    receive = nexus._receive

    def third_times_out(sock: object, deadline: float) -> dict:
        nonlocal answers
        answers += 1
        if answers == 3:
            raise TimeoutError("no complete answer in time")
        return receive(sock, deadline)

    with MetadataReader(facility) as reader:
        reader.use("BIG")
        reader.read(Path("BIG/ID22/scan_05/scan_05.nxs"))  # the worker is up
        first = reader.worker_pid()
        monkeypatch.setattr(nexus, "_receive", third_times_out)
        found = reader.read_many(files)
        assert reader.worker_pid() not in (0, first)
        with pytest.raises(ValueError, match="outside proposal 'BIG'"):
            reader.read_many([Path("GRP/ICON/scan_00/scan_00.nxs")])
    assert isinstance(found[2], OSError) and "gave up on scan_02.nxs" in str(found[2])
    assert [f["title"] for n, f in enumerate(found) if n != 2] == [
        ODD_TITLES[0],
        "Sample 1 of BIG",
        ODD_TITLES[3],
        "Sample 4 of BIG",
    ]
