"""Attacks through what a catalogue says: proposals.yaml's public dates (finding 7), and a
SciCat dataset a user wrote themselves pointing at another proposal's folder."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from portal.catalogue import CatalogueUnavailable, CatalogueUser, DatasetNotFound
from portal.catalogue.local import LocalCatalogue
from portal.catalogue.scicat import SciCatCatalogue
from portal.demo.sampledata import generate
from spawner.mounts import MountError, StorageRoot, plan_mounts
from tests.support.catalogue_servers import Example
from tests.support.fake_scicat import SciCatServer, SciCatUser, scicat_record

TOUR = "MA1234/ID21/nexus_tour_0001"  # open data by a per-dataset public date
TWIN = "MA1234/ID16/nexus_tour_0001"  # same folder name on another instrument: embargoed
START = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture
def catalogue(tmp_path: Path) -> LocalCatalogue:
    root = tmp_path / "data"
    generate(root)
    shutil.copytree(root / TOUR, root / TWIN)  # a member adds a same-named dataset elsewhere
    catalogue = LocalCatalogue(data_root=str(root))
    catalogue.index()
    return catalogue


def test_a_per_dataset_public_date_opens_only_that_pid(catalogue: LocalCatalogue) -> None:
    bob = CatalogueUser("bob", proposals=frozenset({"ES1001"}))
    assert catalogue.get(TOUR, bob).pid == TOUR
    with pytest.raises(DatasetNotFound):
        catalogue.get(TWIN, bob)
    assert TWIN not in {d.pid for d in catalogue.datasets_for(bob)}
    alice = CatalogueUser("alice", proposals=frozenset({"MA1234"}))
    assert catalogue.get(TWIN, alice).pid == TWIN  # members still read it


def test_a_public_date_keyed_by_folder_name_is_refused_with_the_fix(
    catalogue: LocalCatalogue,
) -> None:
    path = Path(catalogue.data_root) / "proposals.yaml"
    path.write_text(path.read_text().replace(f"{TOUR}:", "nexus_tour_0001:"))
    with pytest.raises(CatalogueUnavailable) as e:
        catalogue.datasets_for(CatalogueUser("bob"))
    assert "proposals.MA1234.datasets.nexus_tour_0001: key each dataset by its pid" in str(e.value)
    assert "MA1234/<instrument>/<dataset folder>" in str(e.value)


def test_a_scicat_user_cannot_describe_another_proposals_folder_into_a_mount(
    tmp_path: Path,
) -> None:
    """mallory creates a SciCat dataset of her own whose sourceFolder is IH2002's data."""
    storage = tmp_path / "visitor"
    (storage / "ih2002/id19/tomo").mkdir(parents=True)
    (storage / "ma1234/id21/scan").mkdir(parents=True)
    own = Example("scan", "MA1234", "ID21", "PaNET01177", "Mallory's own scan", START)
    forged = Example("forged", "MA1234", "ID21", "PaNET01177", "Mallory's forgery", START)
    records = [scicat_record(own), scicat_record(forged)]
    records[1] |= {  # POST /api/v3/Datasets by mallory: her group owns it, it points elsewhere
        "sourceFolder": "/data/visitor/ih2002/id19/tomo",
        "createdBy": "mallory",
        "updatedBy": "mallory",
    }
    server = SciCatServer(
        datasets=records,
        users={"mallory": SciCatUser("mallory", "m@example.eu", frozenset({"MA1234"}))},
        id_tokens={"id-mallory": "mallory"},
    )
    mallory = CatalogueUser("mallory", "sub-m", id_token="id-mallory")
    roots = [StorageRoot("/data/visitor", str(storage))]
    with server.running() as url:
        catalogue = SciCatCatalogue(url=url, trusted_writers=["ingestor"])
        scan, forgery = catalogue.get(own.pid, mallory), catalogue.get(forged.pid, mallory)
    assert plan_mounts([scan], roots).dataset_mounts[0].source == storage / "ma1234/id21/scan"
    assert forgery.location == ""  # listed, as SciCat lists it, but never mounted
    with pytest.raises(MountError, match="no storage location the portal can trust"):
        plan_mounts([forgery], roots)
