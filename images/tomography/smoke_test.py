"""Smoke test of tomography (see images/smoke.py): reconstruct a phantom on CPU, read NXtomo."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = Path.home() / "datasets"


def test_algotom_reconstructs_a_square() -> None:
    import warnings

    from algotom.rec.reconstruction import fbp_reconstruction
    from skimage.transform import radon

    phantom = np.zeros((64, 64))
    phantom[24:40, 24:40] = 1
    theta = np.linspace(0, 180, 90, endpoint=False)
    sinogram = radon(phantom, theta).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No Nvidia GPU found! Run with CPU instead"
        rec = fbp_reconstruction(
            sinogram, sinogram.shape[1] / 2, angles=np.deg2rad(theta), apply_log=False
        )
    assert rec[32, 32] > 5 * abs(rec[5, 5]), (rec[32, 32], rec[5, 5])


def test_nabu_and_tomoscan_import_on_cpu() -> None:
    import nabu
    import nxtomo
    import tomoscan
    from nabu.preproc.flatfield import FlatField  # noqa: F401 (the CPU pipeline)

    assert nabu.version and nxtomo.__version__ and tomoscan.__version__


def test_tomoscan_reads_the_phantom_scan() -> None:
    from tomoscan.esrf.scan.nxtomoscan import NXtomoScan

    path = next(DATASETS.rglob("phantom_tomo_*.nxs"))
    scan = NXtomoScan(str(path), entry="entry")
    assert (len(scan.projections), len(scan.flats), len(scan.darks)) == (180, 20, 10), path
    assert (scan.dim_1, scan.dim_2) == (128, 128)
