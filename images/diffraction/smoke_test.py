"""Smoke test of diffraction (see images/smoke.py): pyFAI integrates, sasmodels computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATASETS = Path.home() / "datasets"


def test_pyfai_integrates_the_powder_image() -> None:
    import h5py
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    path = next(DATASETS.rglob("ceo2_powder_*.nxs"))
    with h5py.File(path) as f:
        image = f["entry/data/data"][()]
    ai = AzimuthalIntegrator(dist=0.2, poni1=0.0, poni2=0.0, pixel1=1e-4, pixel2=1e-4)
    ai.setFit2D(200, image.shape[1] / 2, image.shape[0] / 2, wavelength=0.5)
    result = ai.integrate1d(image, 500, unit="2th_deg")
    assert np.isfinite(result.intensity).any() and result.intensity.max() > 0


def test_fabio_writes_and_reads_edf() -> None:
    import fabio
    from fabio.edfimage import EdfImage

    tmp = Path.home() / "smoke.edf"
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    EdfImage(data=data).write(str(tmp))
    assert np.array_equal(fabio.open(str(tmp)).data, data)
    tmp.unlink()


def test_sasmodels_sphere_on_cpu() -> None:
    from sasmodels.core import load_model
    from sasmodels.direct_model import call_kernel

    kernel = load_model("sphere").make_kernel([np.logspace(-3, -1, 20)])
    intensity = call_kernel(kernel, {"radius": 50})
    assert np.all(np.isfinite(intensity)) and intensity[0] > intensity[-1], intensity
