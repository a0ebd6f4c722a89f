"""Smoke test of spectroscopy (see images/smoke.py): Larch normalises, runs FEFF, reads the scan."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

DATASETS = Path.home() / "datasets"


def test_larch_ffts_with_scipy() -> None:
    """The image leaves out mkl_fft (see its Dockerfile): Larch's FFT must fall back to scipy."""
    from larch.xafs import xafsft

    assert xafsft.fft.__module__.startswith("scipy"), xafsft.fft.__module__


def test_xraydb_knows_the_cu_k_edge() -> None:
    import xraydb

    assert abs(xraydb.xray_edge("Cu", "K").energy - 8979.0) < 1.0


def test_larch_finds_the_edge_of_a_synthetic_spectrum() -> None:
    from larch import Group
    from larch.xafs import pre_edge

    energy = np.arange(8900.0, 9300.0, 0.5)
    mu = 0.2 - 1e-4 * (energy - 8979) + 0.5 + np.arctan((energy - 8979.0) / 1.0) / np.pi
    spectrum = Group(energy=energy, mu=mu)
    pre_edge(spectrum)
    assert abs(spectrum.e0 - 8979.0) < 0.5, spectrum.e0
    assert abs(spectrum.edge_step - 1.0) < 0.1, spectrum.edge_step


def test_feff6l_computes_the_cu_first_shell() -> None:
    from larch.xafs import feff6l, feffpath

    a = 3.61  # fcc Cu, Å: the absorber and its 12 nearest neighbours at a/√2
    shell = [(0, s1 * a / 2, s2 * a / 2) for s1 in (-1, 1) for s2 in (-1, 1)]
    shell = [p for x, y, z in shell for p in ((x, y, z), (y, z, x), (z, x, y))]
    atoms = ["  0 0 0 0 Cu"] + [f"  {x} {y} {z} 1 Cu" for x, y, z in shell]
    inp = ["HOLE 1 1.0", "RMAX 2.6", "POTENTIALS", "  0 29 Cu", "  1 29 Cu", "ATOMS", *atoms]
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "feff.inp").write_text("\n".join([*inp, "END", ""]))
        feff6l(folder=folder, verbose=False)
        path = feffpath(str(Path(folder) / "feff0001.dat"))
    assert path.degen == 12 and abs(path.reff - 2.5527) < 1e-3, (path.degen, path.reff)
    assert np.all(np.isfinite(path._feffdat.amp)) and path._feffdat.amp.max() > 0


def test_the_xas_scan_is_readable() -> None:
    import h5py

    path = next(DATASETS.rglob("cu_foil_xas_*.nxs"))
    with h5py.File(path, "r") as f:
        assert f["entry/definition"].asstr()[()] == "NXxas"
        energy = f["entry/instrument/monochromator/energy"][()]
        i0 = f["entry/instrument/incoming_beam/data"][()]
        it = f["entry/instrument/absorbed_beam/data"][()]
    mu = np.log(i0 / it)
    assert energy.shape == mu.shape and np.all(np.diff(energy) > 0), path
    assert mu[energy > 9000].mean() - mu[energy < 8950].mean() > 0.5, "an edge step"
