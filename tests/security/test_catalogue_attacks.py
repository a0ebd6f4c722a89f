"""Attacks through the embedded catalogue's data tree and its proposals.yaml (finding 7)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from portal.catalogue import CatalogueUnavailable, CatalogueUser, DatasetNotFound
from portal.catalogue.local import LocalCatalogue
from portal.demo.sampledata import generate

TOUR = "MA1234/ID21/nexus_tour_0001"  # open data by a per-dataset public date
TWIN = "MA1234/ID16/nexus_tour_0001"  # same folder name on another instrument: embargoed


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
