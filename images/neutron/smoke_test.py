"""Smoke test of neutron (see images/smoke.py): scipp with units, scippneutron, plopp, euphonic."""

from __future__ import annotations

from pathlib import Path

DATASETS = Path.home() / "datasets"


def test_scipp_units() -> None:
    import scipp as sc

    length = sc.arange("x", 5.0, unit="m")
    assert sc.identical(length.sum(), sc.scalar(10.0, unit="m"))


def test_scippneutron_converts_tof_to_wavelength() -> None:
    import scipp as sc
    from scippneutron.conversion.tof import wavelength_from_tof

    tof, length = sc.scalar(10000.0, unit="us"), sc.scalar(10.0, unit="m")
    wavelength = wavelength_from_tof(tof=tof, Ltotal=length).to(unit="angstrom")
    assert abs(wavelength.value - 3.956) < 0.01, wavelength


def test_plopp_plots() -> None:
    import plopp
    import scipp as sc

    figure = plopp.plot(sc.arange("x", 10.0, unit="m"))
    assert figure is not None


def test_euphonic_units() -> None:
    from euphonic import ureg

    assert abs((1 * ureg("meV")).to("THz", "spectroscopy").magnitude - 0.2418) < 1e-3


def test_scipp_reads_the_sqw_file() -> None:
    import scippnexus as snx

    path = next(DATASETS.rglob("chain_sqw_*.nxs"))
    with snx.File(path) as f:
        entries = list(f.keys())
    assert entries, path
