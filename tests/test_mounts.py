"""The mount plan: what a spawn may expose, decided once, for every backend."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portal.catalogue import Dataset
from spawner.mounts import MountError, StorageRoot, plan_mounts, safe_name


def dataset(pid: str, location: str, proposal: str = "MA1234") -> Dataset:
    return Dataset(
        pid=pid,
        title=f"title of {pid}",
        proposal=proposal,
        instrument="ID21",
        location=location,
        techniques=("PaNET01188",),
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """/srv/gpfs/visitor-like storage, plus a secret folder outside it."""
    root = tmp_path / "gpfs/visitor"
    for name in ("ma1234/id21/scan1", "ma1234/id21/scan2", "es1/id22/scan1"):
        (root / name).mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "ma1234/id21/escape").symlink_to(tmp_path / "secret")
    return root


def roots(tree: Path) -> list[StorageRoot]:
    return [StorageRoot("/data/visitor", str(tree))]


def test_datasets_map_through_their_root_read_only(tree: Path) -> None:
    plan = plan_mounts(
        [
            dataset("b", "/data/visitor/ma1234/id21/scan2"),
            dataset("a", "/data/visitor/ma1234/id21/scan1"),
        ],
        roots(tree),
    )
    assert [(m.source, m.target, m.read_only) for m in plan.mounts] == [
        (tree / "ma1234/id21/scan1", PurePosixPath("datasets/MA1234/scan1"), True),
        (tree / "ma1234/id21/scan2", PurePosixPath("datasets/MA1234/scan2"), True),
    ]
    manifest = json.loads(plan.manifest_json())["datasets"]
    assert manifest[0]["pid"] == "a" and manifest[0]["path"] == "datasets/MA1234/scan1"
    assert manifest[0]["techniques"] == [
        {"pid": "PaNET01188", "name": "small angle x-ray scattering"}
    ]


@pytest.mark.parametrize(
    "location",
    [
        "/data/visitor/../../etc",
        "/data/visitor/ma1234/id21/escape",  # a symlink that leaves the root
        "/etc/passwd",
        "/data/visitorX/ma1234",
        "relative/path",
        "/data/visitor",  # the whole root is never a dataset
        "/data/visitor/ma1234/id21/.",  # pathlib would make it the instrument's folder
        "/data/visitor/ma1234//id21/scan1",
    ],
)
def test_locations_outside_roots_are_refused_naming_the_dataset(tree: Path, location: str) -> None:
    with pytest.raises(MountError, match="dataset evil"):
        plan_mounts([dataset("evil", location)], roots(tree))


def test_proposals_never_share_a_folder(tree: Path, tmp_path: Path) -> None:
    twins = [
        dataset("a", "/data/visitor/ma1234/id21/scan1", proposal="MA1234"),
        dataset("b", "/data/visitor/ma1234/id21/scan2", proposal="MA1234."),
    ]
    plan = plan_mounts(twins, roots(tree), str(tmp_path), frozenset({"MA1234", "MA1234."}))
    processed = sorted(str(m.source) for m in plan.mounts if not m.read_only)
    assert len(set(processed)) == 2 and processed[0] == str(tmp_path / "MA1234")
    assert len({m.target.parent for m in plan.dataset_mounts}) == 2


def test_missing_folder_is_refused(tree: Path) -> None:
    with pytest.raises(MountError, match="not a folder"):
        plan_mounts([dataset("gone", "/data/visitor/ma1234/id21/nope")], roots(tree))


def test_collisions_resolve_deterministically(tree: Path) -> None:
    a = dataset("p/1", "/data/visitor/ma1234/id21/scan1")
    b = dataset("p/2", "/data/visitor/es1/id22/scan1")  # same folder name, same proposal
    first = plan_mounts([a, b], roots(tree))
    second = plan_mounts([b, a], roots(tree))
    assert [m.target.name for m in first.mounts] == ["scan1", "scan1-2"]
    assert first == second


def test_processed_area_is_writable_for_members_only(tree: Path, tmp_path: Path) -> None:
    datasets = [
        dataset("a", "/data/visitor/ma1234/id21/scan1"),
        dataset("b", "/data/visitor/es1/id22/scan1", proposal="ES1"),
        dataset("c", "/data/visitor/ma1234/id21/scan2", proposal=""),
    ]
    plan = plan_mounts(datasets, roots(tree), str(tmp_path / "proc"), frozenset({"MA1234", ""}))
    processed = [m for m in plan.mounts if not m.read_only]
    assert [(m.source, m.target) for m in processed] == [
        (tmp_path / "proc/MA1234", PurePosixPath("datasets/MA1234/processed"))
    ]  # not ES1's (not a member), never a shared area for datasets without a proposal


@given(st.text(min_size=0, max_size=40))
def test_safe_name_is_a_single_harmless_component(name: str) -> None:
    cleaned = safe_name(name)
    assert cleaned not in ("", ".", "..")
    assert "/" not in cleaned and "\x00" not in cleaned


SEGMENTS = st.sampled_from(["..", ".", "ma1234", "id21", "scan1", "escape", "", "etc", "~"])


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(SEGMENTS, max_size=8), prefix=st.sampled_from(["/data/visitor", "/data", "/"])
)
def test_no_location_ever_yields_a_source_outside_the_root(
    tree_for_hypothesis: Path, parts: list[str], prefix: str
) -> None:
    location = prefix.rstrip("/") + "/" + "/".join(parts)
    try:
        plan = plan_mounts([dataset("x", location)], roots(tree_for_hypothesis))
    except MountError:
        return
    for mount in plan.mounts:
        assert mount.source.resolve().is_relative_to(tree_for_hypothesis.resolve())
        assert mount.source.resolve() != tree_for_hypothesis.resolve()


@pytest.fixture(scope="module")
def tree_for_hypothesis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hyp")
    root = base / "gpfs/visitor"
    (root / "ma1234/id21/scan1").mkdir(parents=True)
    (base / "etc").mkdir()
    (root / "ma1234/id21/escape").symlink_to(base / "etc")
    (root / "ma1234/up").symlink_to("../..")
    return root
