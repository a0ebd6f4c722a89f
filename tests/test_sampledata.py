"""The demo's sample data: a facility tree of real NeXus files, and who may read which.

The physics checks use textbook values (emission line energies, CeO2 and silver behenate
lattices, the chain's dispersion, the Cu K edge) and the geometry read back from the files, not the
generator's own constants, so they catch a file that would mislead a course notebook.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
import silx.io
import yaml
from silx.io.nxdata import get_default, is_valid_nxdata

from portal.demo.sampledata import DEMO_USERS, SampleDataset, generate

EXPECTED = {
    ("MA1234", "ID21", "xrf_map_0001", "NXxrf"),
    ("MA1234", "ID21", "nexus_tour_0001", None),
    ("MA1234", "ID21", "cu_foil_xas_0001", "NXxas"),
    ("ES1001", "ID22", "ceo2_powder_0001", "NXmonopd"),
    ("IH2002", "ID19", "phantom_tomo_0001", "NXtomo"),
    ("OD2019", "ID02", "agbh_saxs_0001", "NXsas"),
    ("IN5678", "IN5", "chain_sqw_0001", "NXsqom"),
}
HBAR_MEV_S = 6.582119569e-13


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[SampleDataset]]:
    root = tmp_path_factory.mktemp("facility")
    return root, generate(root)


def nexus_file(datasets: list[SampleDataset], name: str) -> h5py.File:
    """The master file of the dataset called ``name``, open for reading."""
    (found,) = [d for d in datasets if d.name == name]
    return h5py.File(found.path / f"{name}.nxs", "r")


def text(field: h5py.Dataset) -> str:
    return field.asstr()[()]


def walk(f: h5py.File) -> list[h5py.Group | h5py.Dataset]:
    """Every group and field of a file (a hard-linked object is visited once)."""
    found: list[h5py.Group | h5py.Dataset] = []
    f.visititems(lambda _name, obj: found.append(obj))
    return found


def aware(timestamp: str) -> datetime:
    """An ISO 8601 time that must carry its timezone."""
    parsed = datetime.fromisoformat(timestamp)
    assert parsed.tzinfo is not None, timestamp
    return parsed


def test_tree_has_a_folder_per_dataset_with_its_master_file(tree) -> None:
    root, datasets = tree
    assert {(d.proposal, d.instrument, d.name, d.definition) for d in datasets} == EXPECTED
    for d in datasets:
        assert d.path == root / d.proposal / d.instrument / d.name
        assert (d.path / f"{d.name}.nxs").is_file()
        assert (d.path / "README.txt").read_text(encoding="utf-8").strip()
    assert (root / "proposals.yaml").is_file()
    assert not list(root.rglob("*.part")), "no half-written files left behind"


def test_every_file_is_nexus_that_h5py_and_silx_open(tree) -> None:
    _, datasets = tree
    for d in datasets:
        path = d.path / f"{d.name}.nxs"
        with h5py.File(path, "r") as f:
            assert f.attrs["NX_class"] == "NXroot"
            assert f.attrs["default"] == "entry"
            assert f.attrs["file_name"] == path.name
            assert f.attrs["creator"]
            aware(f.attrs["file_time"])
            entry = f["entry"]
            assert entry.attrs["NX_class"] == "NXentry"
            assert entry.attrs["default"] in entry
            assert text(entry["title"])
            assert aware(text(entry["start_time"])) <= aware(text(entry["end_time"]))
            assert text(entry["experiment_identifier"]) == d.proposal
            if d.definition is None:
                assert "definition" not in entry
            else:
                assert text(entry["definition"]) == d.definition
            assert entry["instrument"].attrs["NX_class"] == "NXinstrument"
            assert text(entry["instrument/name"]) == d.instrument
            assert text(entry["instrument/source/probe"]) in ("x-ray", "neutron")
            assert entry["sample"].attrs["NX_class"] == "NXsample"
            assert text(entry["sample/name"])

            nxdata = [obj for obj in walk(f) if obj.attrs.get("NX_class") == "NXdata"]
            assert nxdata
            for group in nxdata:
                assert group.attrs["signal"] in group, group.name
                for axis in group.attrs["axes"]:
                    if axis != ".":
                        assert "units" in group[axis].attrs, f"{group.name}/{axis}"
        with silx.io.open(str(path)) as f:
            default = get_default(f)
            assert default is not None and is_valid_nxdata(default.group), path


def test_links_name_their_target(tree) -> None:
    _, datasets = tree
    links = 0
    for d in datasets:
        with h5py.File(d.path / f"{d.name}.nxs", "r") as f:
            targets = [obj for obj in walk(f) if "target" in obj.attrs]
            for obj in targets:
                assert f[obj.attrs["target"]] == obj
            links += len(targets)
    assert links
    with nexus_file(datasets, "ceo2_powder_0001") as f:
        assert f["entry/data/data"].attrs["target"] == "/entry/instrument/detector/data"


def test_the_non_ascii_title_reads_back(tree) -> None:
    with nexus_file(tree[1], "xrf_map_0001") as f:
        assert text(f["entry/title"]) == "Zn distribution in Arabidopsis leaf \u2013 \u00b5-XRF"


@pytest.mark.parametrize(
    ("element", "kalpha_kev"), [("K", 3.314), ("Ca", 3.692), ("Fe", 6.404), ("Zn", 8.639)]
)
def test_xrf_sum_spectrum_peaks_at_the_emission_lines(tree, element, kalpha_kev) -> None:
    with nexus_file(tree[1], "xrf_map_0001") as f:
        mca = f["entry/instrument/fluorescence/data"]
        assert mca.shape == (46, 57, 2048)
        assert mca.dtype == np.uint32
        assert f["entry/i0/data"].shape == f["entry/it/data"].shape == (46, 57)
        energy = f["entry/instrument/fluorescence/energy"]
        assert energy.attrs["units"] == "keV"
        energy = energy[()]
        spectrum = mca[()].sum(axis=(0, 1), dtype=np.float64)
    line = int(np.argmin(np.abs(energy - kalpha_kev)))
    near = slice(line - 8, line + 9)
    peak = line - 8 + int(np.argmax(spectrum[near]))
    assert abs(peak - line) <= 2, f"{element} K-alpha at channel {peak}, expected {line}"
    assert spectrum[peak] > 2 * np.median(spectrum[line - 40 : line + 40])


def radial_profile(image, keep, centre, step=0.25):
    """Mean intensity against radius (pixels) from ``centre``, over the ``keep`` pixels."""
    rows, cols = image.shape
    x = np.arange(cols) + 0.5 - centre[0]
    y = np.arange(rows) + 0.5 - centre[1]
    radius = np.hypot(x[None, :], y[:, None])[keep]
    bins = (radius / step).astype(int)
    total = np.bincount(bins, weights=image[keep].astype(float))
    return total / np.maximum(np.bincount(bins), 1)


def ring_radius(profile, expected_px, step=0.25, search_px=6.0, half_width_px=2.0) -> float:
    """Where the ring near ``expected_px`` is: its profile's maximum, refined by a centroid."""
    lo = int((expected_px - search_px) / step)
    top = lo + int(np.argmax(profile[lo : int((expected_px + search_px) / step)]))
    lo, hi = top - int(half_width_px / step), top + int(half_width_px / step) + 1
    window = profile[lo:hi] - profile[lo:hi].min()
    return float(np.sum((np.arange(lo, hi) + 0.5) * step * window) / window.sum())


def read_geometry(f: h5py.File) -> dict[str, float]:
    """Wavelength (Å), distance and pixel size (m), beam centre (pixels), checking units."""
    detector = f["entry/instrument/detector"]
    wavelength = f["entry/instrument/monochromator/wavelength"]
    assert wavelength.attrs["units"] == "angstrom"
    for name, unit in (("distance", "m"), ("x_pixel_size", "m"), ("beam_center_x", "pixel")):
        assert detector[name].attrs["units"] == unit
    assert detector["x_pixel_size"][()] == detector["y_pixel_size"][()]
    return {
        "wavelength": wavelength[()],
        "distance": detector["distance"][()],
        "pixel": detector["x_pixel_size"][()],
        "x": detector["beam_center_x"][()],
        "y": detector["beam_center_y"][()],
    }


def radius_px(geometry: dict[str, float], d_spacing: float) -> float:
    two_theta = 2 * np.arcsin(geometry["wavelength"] / (2 * d_spacing))
    return geometry["distance"] * np.tan(two_theta) / geometry["pixel"]


def sector_profiles(f: h5py.File, geometry: dict[str, float]) -> list[np.ndarray]:
    """Radial profiles in four azimuthal sectors: a wrong beam centre shifts them apart."""
    image = f["entry/instrument/detector/data"][()]
    unmasked = f["entry/instrument/detector/pixel_mask"][()] == 0
    rows, cols = image.shape
    azimuth = np.arctan2(
        np.arange(rows)[:, None] + 0.5 - geometry["y"],
        np.arange(cols)[None, :] + 0.5 - geometry["x"],
    )
    sectors = ((azimuth // (np.pi / 2)) + 2).astype(int)
    return [
        radial_profile(image, unmasked & (sectors == s), (geometry["x"], geometry["y"]))
        for s in range(4)
    ]


def test_ceo2_rings_sit_where_the_stored_geometry_puts_them(tree) -> None:
    a = 5.4111  # CeO2 lattice constant (Å), NIST SRM 674b
    with nexus_file(tree[1], "ceo2_powder_0001") as f:
        geometry = read_geometry(f)
        profiles = sector_profiles(f, geometry)
    for hkl in [(1, 1, 1), (2, 0, 0), (2, 2, 0), (3, 1, 1)]:
        expected = radius_px(geometry, a / np.sqrt(sum(i * i for i in hkl)))
        for profile in profiles:
            assert ring_radius(profile, expected) == pytest.approx(expected, abs=0.25), hkl
    # fcc: (110) is forbidden, so there is no ring between (111) and the beamstop.
    forbidden = radius_px(geometry, a / np.sqrt(2))
    allowed = radius_px(geometry, a / np.sqrt(3))
    for profile in profiles:
        assert profile[int(forbidden / 0.25)] < 0.2 * profile[int(allowed / 0.25)]


def test_silver_behenate_rings_sit_at_its_58_38_angstrom_period(tree) -> None:
    period = 58.38  # Å
    with nexus_file(tree[1], "agbh_saxs_0001") as f:
        geometry = read_geometry(f)
        profiles = sector_profiles(f, geometry)
    for order in (1, 2):
        expected = radius_px(geometry, period / order)
        for profile in profiles:
            assert ring_radius(profile, expected) == pytest.approx(expected, abs=0.25), order


def test_tomo_scan_has_projections_flats_and_darks(tree) -> None:
    with nexus_file(tree[1], "phantom_tomo_0001") as f:
        detector = f["entry/instrument/detector"]
        frames = detector["data"][()].astype(float)
        key = detector["image_key"][()]
        angle = f["entry/sample/rotation_angle"]
        assert angle.attrs["units"] == "degree"
        angle = angle[()]
        assert f["entry/data/image_key"] == detector["image_key"]
        assert f["entry/data/rotation_angle"] == f["entry/sample/rotation_angle"]
    assert frames.shape == (len(key), 128, 128) == (210, 128, 128)
    assert {k: int(np.sum(key == k)) for k in (0, 1, 2)} == {0: 180, 1: 20, 2: 10}
    projections = angle[key == 0]
    assert projections[0] == 0 and projections[-1] < 180
    assert np.all(np.diff(projections) > 0)
    dark, flat = frames[key == 2].mean(), frames[key == 1].mean()
    assert dark < frames[key == 0].mean() < flat, "the sample attenuates; darks are darkest"


def test_chain_phonons_follow_the_stored_dispersion(tree) -> None:
    with nexus_file(tree[1], "chain_sqw_0001") as f:
        sample = f["entry/sample"]
        assert sample["lattice_constant"].attrs["units"] == "angstrom"
        assert sample["force_constant_over_mass"].attrs["units"] == "1/s^2"
        a, k_over_m = sample["lattice_constant"][()], sample["force_constant_over_mass"][()]
        data = f["entry/data"]
        sqw, energy, q = data["data"][()], data["energy_transfer"][()], data["q"][()]
        assert data["energy_transfer"].attrs["units"] == "meV"
    omega = HBAR_MEV_S * 2 * np.sqrt(k_over_m) * np.abs(np.sin(q * a / 2))
    assert 5 < omega.max() < 15, "the branch must lie within the measured energy range"
    loss = energy > 1.5
    checked = 0
    for column, expected in enumerate(omega):
        if 3 < expected < 11:
            peak = energy[loss][np.argmax(sqw[loss, column])]
            assert peak == pytest.approx(expected, abs=0.3), q[column]
            gain = np.argmin(np.abs(energy + expected))
            assert sqw[gain, column] < sqw[np.argmin(np.abs(energy - expected)), column]
            checked += 1
    assert checked > 50


def test_cu_foil_scan_has_its_edge_at_the_cu_k_edge_and_stores_its_truth(tree) -> None:
    cu_k_edge_ev = 8979.0  # X-ray Data Booklet
    with nexus_file(tree[1], "cu_foil_xas_0001") as f:
        energy = f["entry/instrument/monochromator/energy"]
        assert energy.attrs["units"] == "eV"
        energy = energy[()]
        i0 = f["entry/instrument/incoming_beam/data"][()]
        it = f["entry/instrument/absorbed_beam/data"][()]
        assert f["entry/data/absorbed_beam"] == f["entry/instrument/absorbed_beam/data"]
        assert f["entry/monitor/data"] == f["entry/instrument/incoming_beam/data"]
        truth = f["entry/sample/ground_truth"]
        assert truth["edge_energy"].attrs["units"] == "eV"
        assert truth["first_shell_distance"].attrs["units"] == "angstrom"
        edge, distance = truth["edge_energy"][()], truth["first_shell_distance"][()]
        assert truth["coordination_number"][()] == 12  # fcc
    assert abs(edge - cu_k_edge_ev) < 1.0
    assert 2.45 < distance < 2.60, "near fcc Cu's a/sqrt(2) = 2.553 Å"
    assert np.all(np.diff(energy) > 0) and energy[0] < edge - 100 and energy[-1] > edge + 700
    mu = np.log(i0 / it)
    slope = np.gradient(mu, energy)
    assert abs(energy[np.argmax(slope)] - edge) <= 0.5
    assert 1.0 < mu[energy > edge + 50].mean() - mu[energy < edge - 50].mean() < 1.5


def test_proposals_yaml_has_embargoed_open_and_never_public_proposals(tree) -> None:
    root, datasets = tree
    raw = (root / "proposals.yaml").read_text(encoding="utf-8")
    assert raw.startswith("# "), "a commented file, for the admins who read it"
    proposals = yaml.safe_load(raw)["proposals"]
    today = date.today()
    assert set(proposals) == {d.proposal for d in datasets}

    assert "alice" not in proposals["IH2002"]["members"]
    assert proposals["IH2002"]["public_date"] > today
    assert proposals["OD2019"]["public_date"] < today
    assert "public_date" not in proposals["IN5678"]
    assert proposals["MA1234"]["datasets"]["MA1234/ID21/nexus_tour_0001"]["public_date"] < today
    for d in datasets:
        rules = proposals[d.proposal]
        override = (rules.get("datasets") or {}).get(f"{d.proposal}/{d.instrument}/{d.name}", {})
        assert d.public_date == override.get("public_date", rules.get("public_date"))


def test_proposal_members_agree_with_the_identity_provider(tree) -> None:
    root, _ = tree
    proposals = yaml.safe_load((root / "proposals.yaml").read_text(encoding="utf-8"))["proposals"]
    for username, claims in DEMO_USERS.items():
        members_of = {pid for pid, rules in proposals.items() if username in rules["members"]}
        assert members_of == set(claims["proposals"]), username


def test_demo_users_carry_umbrella_style_claims() -> None:
    assert {u: (c["groups"], c["proposals"]) for u, c in DEMO_USERS.items()} == {
        "alice": (["researchers"], ["MA1234", "ES1001"]),
        "bob": (["researchers"], ["ES1001", "IH2002", "IN5678"]),
        "carol": (["researchers", "trainers"], ["OD2019"]),
        "dave": (["admins"], []),
    }
    for username, claims in DEMO_USERS.items():
        assert claims["preferred_username"] == username
        assert claims["name"] and "@" in claims["email"]
        assert claims["sub"] != username, "the username must come from claim mapping"
        assert json.loads(json.dumps(claims)) == claims  # handed to the provider as JSON
    assert len({c["sub"] for c in DEMO_USERS.values()}) == len(DEMO_USERS)


def test_second_run_reuses_the_tree_and_force_rewrites_the_same_data(tmp_path) -> None:
    first = generate(tmp_path)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    long_ago = 1_000_000_000
    for path in files:
        os.utime(path, (long_ago, long_ago))
    with nexus_file(first, "xrf_map_0001") as f:
        cube = f["entry/instrument/fluorescence/data"][()]

    assert generate(tmp_path) == first
    assert [p.stat().st_mtime for p in files] == [long_ago] * len(files)

    assert generate(tmp_path, force=True) == first
    assert all(p.stat().st_mtime > long_ago for p in files)
    with nexus_file(first, "xrf_map_0001") as f:
        assert np.array_equal(f["entry/instrument/fluorescence/data"][()], cube), "seeded"
