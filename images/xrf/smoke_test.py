"""Smoke test of xrf (see images/smoke.py): PyMca fits and xraylib answers, on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = Path.home() / "datasets"


def test_xraylib() -> None:
    import xraylib

    fe_ka1 = xraylib.LineEnergy(26, xraylib.KL3_LINE)
    assert abs(fe_ka1 - 6.404) < 0.01, fe_ka1


def test_pymca_fits_a_peak() -> None:
    from PyMca5.PyMcaMath.fitting import SpecfitFuns

    x = np.linspace(0, 20, 400)
    y = 100 * np.exp(-0.5 * ((x - 6.4) / 0.15) ** 2) + 5
    # A Fe K-alpha-like line on a flat background: PyMca's peak search must find it at 6.4 keV.
    peaks = SpecfitFuns.seek(y, 0, len(y), 10, 2.0)
    assert peaks and abs(x[int(peaks[0])] - 6.4) < 0.1, peaks


def test_pymca_reads_the_xrf_map() -> None:
    from PyMca5.PyMcaCore import NexusDataSource

    path = next(DATASETS.rglob("xrf_map_*.nxs"))
    source = NexusDataSource.NexusDataSource(str(path))
    assert source.getSourceInfo()["KeyList"], path
