"""Finding 2: a data file must not make the indexer read anything outside itself.

Crafted NeXus files in a real data tree, indexed by the real local catalogue as the hub
does it (here as root, like the hub on a Docker host). The secret stands for the hub's
crypt key, cookie secret or database: a file only root may read.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from portal.catalogue import CatalogueUser
from portal.catalogue.local import LocalCatalogue
from portal.catalogue.nexus import MetadataReader

SECRET = b"crypt-key-7f3a9c2e1d"
ALICE = CatalogueUser("alice", proposals=frozenset({"MA1234"}))


def nexus(path: Path, build) -> None:
    """A NeXus file whose NXentry is made by ``build(entry)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        f.attrs["default"] = "entry"
        build(entry)


def external_storage(secret: Path):
    def build(entry: h5py.Group) -> None:
        entry.create_dataset(
            "title", shape=(len(SECRET),), dtype="S1", external=[(secret, 0, len(SECRET))]
        )

    return build


def external_link(other: Path):
    def build(entry: h5py.Group) -> None:
        entry["title"] = h5py.ExternalLink(str(other), "/stolen/title")

    return build


def virtual_dataset(other: Path):
    def build(entry: h5py.Group) -> None:
        layout = h5py.VirtualLayout(shape=(len(SECRET),), dtype="S1")
        layout[:] = h5py.VirtualSource(str(other), "/stolen/bytes", shape=(len(SECRET),))
        entry.create_virtual_dataset("title", layout)

    return build


def linked_entry(other: Path):
    def build(entry: h5py.Group) -> None:
        del entry.file["entry"]
        entry.file["entry"] = h5py.ExternalLink(str(other), "/stolen")

    return build


def soft_link_out(other: Path):
    def build(entry: h5py.Group) -> None:
        entry.file["elsewhere"] = h5py.ExternalLink(str(other), "/stolen")
        entry["title"] = h5py.SoftLink("/elsewhere/title")

    return build


def huge_field(_: Path):
    def build(entry: h5py.Group) -> None:  # 2 GB of zeros, compressed to almost nothing
        entry.create_dataset(
            "title", shape=(2 << 30,), dtype="u1", chunks=(1 << 20,), compression="gzip"
        )

    return build


ATTACKS = {
    "external-storage": external_storage,
    "external-link": external_link,
    "virtual-dataset": virtual_dataset,
    "external-entry": linked_entry,
    "soft-link-out": soft_link_out,
    "huge-field": huge_field,
}


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    """The root-only secret, and another proposal's file that holds it as data."""
    secret = tmp_path / "state" / "crypt_key"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    other = tmp_path / "data" / "IH2002" / "ID19" / "tomo" / "tomo.nxs"
    other.parent.mkdir(parents=True)
    with h5py.File(other, "w") as f:
        f["stolen/title"] = SECRET
        f["stolen/bytes"] = np.frombuffer(SECRET, dtype="S1")
    return secret, other


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_crafted_file_never_brings_other_bytes_into_the_catalogue(
    tmp_path: Path, secrets: tuple[Path, Path], attack: str
) -> None:
    secret, other = secrets
    target = other if attack != "external-storage" else secret
    crafted = tmp_path / "data" / "MA1234" / "ID21" / "scan_0001" / "scan_0001.nxs"
    nexus(crafted, ATTACKS[attack](target))
    catalogue = LocalCatalogue(data_root=str(tmp_path / "data"))
    report = catalogue.index()
    assert str(crafted) in report.skipped_files  # refused, named in the report and the log
    (scan,) = [d for d in catalogue.datasets_for(ALICE) if d.pid.endswith("scan_0001")]
    assert scan.title == "scan_0001"  # the folder's name: nothing read from the file
    index = Path(catalogue.index_path).read_bytes()
    assert SECRET not in index and SECRET.decode() not in scan.title


def test_the_workers_are_unprivileged_bounded_offline_and_one_per_proposal(
    tmp_path: Path,
) -> None:
    """Whatever a check might miss runs as nobody, bounded, with no network, and sees the
    files of one proposal only."""
    for proposal in ("MA1234", "IH2002"):
        nexus(
            tmp_path / proposal / "f.nxs", lambda e: e.create_dataset("title", data="T\x1b[31m\n")
        )
    with MetadataReader(tmp_path) as reader:
        reader.use("MA1234")
        assert reader.read(Path("MA1234/f.nxs")) == {"title": "T [31m"}  # control chars gone
        first = reader.worker_pid()
        status = Path(f"/proc/{first}/status").read_text().splitlines()
        uids = next(line.split()[1:] for line in status if line.startswith("Uid:"))
        limits = Path(f"/proc/{first}/limits").read_text()
        network = os.readlink(f"/proc/{first}/ns/net")
        root = os.readlink(f"/proc/{first}/root")
        reader.use("IH2002")
        assert reader.read(Path("IH2002/f.nxs")) == {"title": "T [31m"}
        second = reader.worker_pid()
    assert os.geteuid() == 0, "the suite runs as root, as the hub on a Docker host"
    assert uids == ["65534"] * 4  # real, effective, saved and filesystem uid: nobody
    assert "Max address space" in limits and str(1 << 30) in limits
    assert re.search(r"Max file size\s+0\s+0", limits)
    assert re.search(r"Max open files\s+32\s+32", limits)
    assert network != os.readlink("/proc/self/ns/net")  # a network namespace of its own
    assert root != "/" and "panosc-nexus-" in root  # shut in an empty folder: no file by path
    assert re.search(r"Max processes\s+0\s+0", limits)  # no child to outlive a kill
    assert second != first and gone(first)  # one worker per proposal


def gone(pid: int) -> bool:
    """Exited: no process, or a zombie its parent has not reaped yet."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


def test_a_folder_swapped_for_a_symlink_or_a_fifo_is_never_read(tmp_path: Path) -> None:
    """The indexer listed a file, then its folder became a symlink to another proposal's,
    or the file a FIFO (which would hang a plain open): both are refused, nothing hangs."""
    victim = tmp_path / "IH2002/ID19/tomo/raw/tomo.nxs"
    nexus(victim, lambda e: e.create_dataset("title", data="IH2002's embargoed title"))
    mine = tmp_path / "MA1234/ID21/scan/raw/tomo.nxs"
    nexus(mine, lambda e: e.create_dataset("title", data="mine"))
    with MetadataReader(tmp_path, timeout=5) as reader:
        reader.use("MA1234")
        assert reader.read(Path("MA1234/ID21/scan/raw/tomo.nxs")) == {"title": "mine"}
        shutil.rmtree(mine.parent)
        mine.parent.symlink_to(victim.parent)
        with pytest.raises(OSError, match=r"Too many levels of symbolic links|Not a directory"):
            reader.read(Path("MA1234/ID21/scan/raw/tomo.nxs"))
        mine.parent.unlink()
        mine.parent.mkdir()
        os.mkfifo(mine)
        started = time.monotonic()
        with pytest.raises(OSError, match="not a regular file"):
            reader.read(Path("MA1234/ID21/scan/raw/tomo.nxs"))
        assert time.monotonic() - started < 2
