"""The local NeXus catalogue on the demo's sample data: who sees what, and re-indexing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portal.catalogue import CatalogueUser, DatasetNotFound
from portal.catalogue.local import LocalCatalogue
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
    assert first.added == 6 and first.unchanged == 0
    again = cat.index()
    assert again.added == again.updated == again.removed == 0 and again.unchanged == 6

    broken = root / "MA1234/ID21/broken_0001"
    broken.mkdir()
    (broken / "broken_0001.nxs").write_bytes(b"this is not HDF5")
    shutil.rmtree(root / "IN5678/IN5/chain_sqw_0001")
    report = cat.index()
    assert (report.added, report.removed, report.unchanged) == (1, 1, 5)
    assert report.skipped_files == (str(broken / "broken_0001.nxs"),)
    owner = CatalogueUser("alice", proposals=frozenset({"MA1234"}))
    assert cat.get("MA1234/ID21/broken_0001", owner).title == "broken_0001"
