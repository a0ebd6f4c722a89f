"""Published results on the local catalogue: a frozen copy of the results in the data tree.

A derived dataset is ``<data_root>/<proposal>/derived/<name>/``: the results as they were
when published (copied by the hub) and the portal's ``derived.json`` beside them. Its page
shows the results' size and file count, and "Open" mounts that folder read-only through the
same storage root as every other dataset. The attacks: a processed area is writable by every
member of the proposal while the hub copies it (links planted or swapped in), and a
``derived.json`` whose fields point elsewhere (another proposal's data, ``/etc``, a link,
``..``). Nothing of either may become visible or mountable.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from portal.catalogue import DatasetNotFound
from portal.catalogue.local import DERIVED_FILE, LocalCatalogue
from portal.catalogue.model import Dataset
from portal.publish import PublishRefused, prepare, publish_local
from spawner.mounts import StorageRoot, plan_mounts
from tests.support.catalogue_examples import ALICE, BOB
from tests.support.records import write_record

RAW = "MA1234/ID21/xrf_map_0001"
EMBARGOED = "IH2002/ID19/tomo_0001"  # alice is no member of IH2002
PEAKS = b"energy,counts\n1,2\n"


class Site:
    """A data tree (MA1234 open data, IH2002 embargoed), its catalogue and a processed root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.processed = base / "processed"
        for pid in (RAW, EMBARGOED):
            (self.data / pid).mkdir(parents=True)
            (self.data / pid / "notes.txt").write_text(f"raw data of {pid}\n")
        later = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
        proposals = {
            "MA1234": {"members": ["alice"], "public_date": later},
            "IH2002": {"members": ["bob"], "public_date": later},
        }
        (self.data / "proposals.yaml").write_text(yaml.safe_dump({"proposals": proposals}))
        self.catalogue = LocalCatalogue(data_root=str(self.data), index_workers=1, thumbnails=False)
        self.catalogue.index()
        self.area = self.processed / "MA1234"
        results = self.area / "results" / "fit-1"
        (results / "plots").mkdir(parents=True)
        (results / "peaks.csv").write_bytes(PEAKS)
        (results / "plots" / "map.png").write_bytes(b"\x89PNG" + b"0" * 96)
        self.results = results
        self.record = write_record(self.area, [self.catalogue.get(RAW, ALICE)])

    def prepare(self, folder: str = "results/fit-1"):
        return prepare(
            self.catalogue,
            ALICE,
            str(self.processed),
            proposal="MA1234",
            folder=folder,
            records=[self.record],
            title="Fitted peaks",
            description="Peaks of the XRF map.",
        )

    def derived(self) -> list[Path]:
        """Everything under ``<data_root>/MA1234/derived``, hidden folders included."""
        folder = self.data / "MA1234" / "derived"
        return sorted(folder.iterdir()) if folder.exists() else []

    def mount_of(self, dataset: Dataset) -> Path:
        """The host folder "Open" would mount for ``dataset`` (the hub's storage root)."""
        root = StorageRoot(str(self.data.absolute()), str(self.data))
        [mount] = plan_mounts([dataset], [root]).dataset_mounts
        assert mount.read_only
        return mount.source


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def test_a_published_dataset_is_a_frozen_copy_of_the_results(site: Site) -> None:
    pid = publish_local(site.catalogue, site.prepare())
    dataset = site.catalogue.get(pid, ALICE)
    # the page shows the results: two files and their bytes, not the portal's description
    assert (dataset.file_count, dataset.size) == (2, len(PEAKS) + 100)
    folder = site.mount_of(dataset)
    assert folder == (site.data / pid).resolve()
    assert (folder / "peaks.csv").read_bytes() == PEAKS
    assert (folder / "plots" / "map.png").stat().st_size == 100
    assert json.loads((folder / DERIVED_FILE).read_text())["inputs"] == [RAW]
    # frozen: what the members do to their results afterwards changes nothing published
    (site.results / "peaks.csv").write_text("overwritten\n")
    (site.results / "later.csv").write_text("added after publishing\n")
    site.catalogue.index()
    again = site.catalogue.get(pid, ALICE)
    assert (again.file_count, again.size) == (2, len(PEAKS) + 100)
    assert (folder / "peaks.csv").read_bytes() == PEAKS
    assert not (folder / "later.csv").exists()
    assert oct((folder / "peaks.csv").stat().st_mode & 0o777) == oct(0o444)
    # members only, while its inputs are embargoed
    with pytest.raises(DatasetNotFound):
        site.catalogue.get(pid, BOB)


def test_a_refused_publication_copies_nothing(site: Site) -> None:
    (site.area / "results" / "empty").mkdir()
    with pytest.raises(PublishRefused):
        site.prepare("results/empty")
    with pytest.raises(PublishRefused):
        site.prepare("../IH2002")
    assert site.derived() == []


def test_results_naming_the_portal_description_are_refused(site: Site) -> None:
    """Attack: results holding their own ``derived.json`` at the top would be read as the
    portal's description (inputs, so the embargo); refused, and nothing copied."""
    (site.results / DERIVED_FILE).write_text(json.dumps({"inputs": [], "title": "mine"}))
    publication = site.prepare()
    with pytest.raises(PublishRefused, match=DERIVED_FILE) as e:
        publish_local(site.catalogue, publication)
    assert e.value.field == "folder"
    assert site.derived() == []


def test_links_in_the_results_are_not_copied(site: Site) -> None:
    """Attack: links planted in the results to another proposal's data and to ``/etc``."""
    os.symlink(site.data / EMBARGOED, site.results / "tomo")
    os.symlink("/etc/passwd", site.results / "passwd.csv")
    os.symlink(site.data / EMBARGOED / "notes.txt", site.results / "plots" / "notes.txt")
    pid = publish_local(site.catalogue, site.prepare())
    folder = site.mount_of(site.catalogue.get(pid, ALICE))
    copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert copied == [DERIVED_FILE, "peaks.csv", "plots", "plots/map.png"]
    assert not any(p.is_symlink() for p in folder.rglob("*"))


def test_a_results_folder_swapped_for_a_link_after_the_check_copies_nothing(site: Site) -> None:
    """Attack: a fellow member replaces the checked folder with a link to another
    proposal's data between the form's check and the copy."""
    publication = site.prepare()
    site.results.rename(site.area / "results" / "moved")
    os.symlink(site.data / "IH2002", site.results)
    with pytest.raises(PublishRefused, match="symbolic link") as e:
        publish_local(site.catalogue, publication)
    assert e.value.field == "folder"
    assert site.derived() == []


def test_a_subfolder_swapped_for_a_link_during_the_copy_is_not_followed(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: the swap happens while the hub walks the results, right after it listed the
    top folder: the link to /etc is listed as a folder and must not be descended."""
    import portal.publish as publish

    real = os.fwalk

    def swapping(*args, **kwargs):
        walk = real(*args, **kwargs)
        first = next(walk)
        (site.results / "plots").rename(site.area / "plots-moved")
        os.symlink("/etc", site.results / "plots")
        yield first
        yield from walk

    monkeypatch.setattr(publish.os, "fwalk", swapping)
    pid = publish_local(site.catalogue, site.prepare())
    folder = site.mount_of(site.catalogue.get(pid, ALICE))
    copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    assert copied == [DERIVED_FILE, "peaks.csv"]


@pytest.mark.parametrize(
    "pointing",
    [
        {"results_folder": "/etc"},
        {"results_folder": "../../../IH2002/ID19/tomo_0001"},
        {"results_folder": "{data}/IH2002/ID19/tomo_0001"},
        {"results_folder": "{link}"},
        {"files": [{"path": "../../../../etc/passwd", "size": 1}]},
    ],
    ids=["etc", "dot-dot", "other-proposal", "symlink", "files"],
)
def test_a_forged_derived_json_makes_nothing_else_visible_or_mountable(
    site: Site, pointing: dict
) -> None:
    """Attack: a ``derived.json`` written into the tree by hand, pointing at data it may not.
    The dataset is its own folder, whatever the file says: that folder's size and files,
    and that folder mounted."""
    link = site.base / "link"
    link.symlink_to(site.data / EMBARGOED, target_is_directory=True)
    forged = site.data / "MA1234" / "derived" / "forged"
    forged.mkdir(parents=True)
    fields = {k: v for k, v in pointing.items()}
    if "results_folder" in fields:
        fields["results_folder"] = fields["results_folder"].format(data=site.data, link=link)
    doc = {"title": "Forged", "inputs": [RAW], "software": [], **fields}
    (forged / DERIVED_FILE).write_text(json.dumps(doc))
    site.catalogue.index()
    dataset = site.catalogue.get("MA1234/derived/forged", ALICE)
    assert (dataset.file_count, dataset.size) == (0, 0)
    source = site.mount_of(dataset)
    assert source == forged.resolve()
    assert sorted(p.name for p in source.iterdir()) == [DERIVED_FILE]


def test_a_derived_json_that_is_a_link_is_not_read(site: Site) -> None:
    """Attack: ``derived.json`` as a link to another file: not the portal's description."""
    folder = site.data / "MA1234" / "derived" / "linked"
    folder.mkdir(parents=True)
    (site.base / "elsewhere.json").write_text(json.dumps({"title": "Linked", "inputs": []}))
    (folder / DERIVED_FILE).symlink_to(site.base / "elsewhere.json")
    (folder / "data.csv").write_text("1\n")
    site.catalogue.index()
    dataset = site.catalogue.get("MA1234/derived/linked", ALICE)
    assert dataset.title != "Linked" and dataset.inputs == ()
