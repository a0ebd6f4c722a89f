"""A small facility's worth of real NeXus/HDF5 files, for the demo, the tests and the courses.

The embedded demo needs data that behaves like a facility's: proposals with members and
embargoes, datasets from several techniques, and files that h5web, silx and the course
notebooks can open and analyse. :func:`generate` writes such a tree::

    <root>/proposals.yaml
    <root>/<proposal>/<instrument>/<dataset>/<dataset>.nxs   (+ README.txt)

Every file is simulated from a physical model with a seeded random generator, so the numbers
are reproducible and a notebook can check its result against the truth stored in the file
(element line energies, CeO2 lattice, silver behenate period, the tomography phantom's
attenuation, phonon dispersion, the Cu foil's edge energy and first-shell distance). The
datasets, their proposals and the demo users in :data:`DEMO_USERS` come from one table
(``_PROPOSALS``), so ``proposals.yaml`` and the identity provider's claims cannot disagree.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from portal import __version__

_PROPOSALS_FILE = "proposals.yaml"

_CREATOR = f"panosc-portal {__version__} (portal.demo.sampledata, simulated data)"
_CET = timezone(timedelta(hours=1))  # Grenoble (ESRF and ILL) in winter
_CEST = timezone(timedelta(hours=2))  # ... and in summer
_HC_KEV_ANGSTROM = 12.398419843  # E [keV] = hc / wavelength [Å]
_HBAR_MEV_S = 6.582119569e-13  # reduced Planck constant in meV·s
_KB_MEV_PER_K = 8.617333262e-2  # Boltzmann constant in meV/K


@dataclass(frozen=True)
class SampleDataset:
    """One generated dataset: where it is and what the catalogue should say about it."""

    proposal: str
    instrument: str
    name: str
    path: Path  # the dataset folder; the NeXus file is path / f"{name}.nxs"
    definition: str | None  # NeXus application definition in NXentry/definition
    public_date: date | None  # end of the embargo (a per-dataset override wins); None: never


# -- NeXus writing helpers ---------------------------------------------------------------------


def _group(parent: h5py.Group, name: str, nx_class: str, **attrs: Any) -> h5py.Group:
    """A NeXus group: an HDF5 group whose NX_class attribute names its base class."""
    group = parent.create_group(name)
    group.attrs["NX_class"] = nx_class
    group.attrs.update(attrs)
    return group


def _field(
    parent: h5py.Group,
    name: str,
    value: Any,
    units: str | None = None,
    *,
    chunks: tuple[int, ...] | None = None,
    **attrs: Any,
) -> h5py.Dataset:
    """A NeXus field; passing ``chunks`` compresses it (gzip + shuffle, readable everywhere).

    gzip rather than an hdf5plugin filter because every HDF5 reader has gzip built in, and a
    course notebook must not fail on a missing plugin.
    """
    if chunks is None:
        field = parent.create_dataset(name, data=value)
    else:
        field = parent.create_dataset(
            name, data=value, chunks=chunks, compression="gzip", compression_opts=4, shuffle=True
        )
    if units is not None:
        field.attrs["units"] = units
    field.attrs.update(attrs)
    return field


def _link(group: h5py.Group, name: str, target: h5py.Dataset) -> None:
    """Hard-link ``target`` into ``group``, NeXus style.

    The ``target`` attribute records the original path, which is how NeXus readers tell the
    field's home (e.g. the detector) from the places that merely show it (e.g. NXdata).
    """
    target.attrs["target"] = target.name
    group[name] = target


def _nxdata(parent: h5py.Group, name: str, signal: str, axes: Sequence[str]) -> h5py.Group:
    """An NXdata group with ``signal``/``axes`` and an ``<axis>_indices`` per named axis."""
    group = _group(parent, name, "NXdata", signal=signal, axes=list(axes))
    for index, axis in enumerate(axes):
        if axis != ".":
            group.attrs[f"{axis}_indices"] = index
    return group


def _monitor(entry: h5py.Group, name: str, preset_s: float, **counts: Any) -> None:
    """A counting-time NXmonitor: the incident-flux normalisation each definition asks for.

    ``counts`` are its count fields, ``data`` (per point or frame) and/or ``integral``.
    """
    monitor = _group(entry, name, "NXmonitor")
    _field(monitor, "mode", "timer")
    _field(monitor, "preset", preset_s, "s")
    for field, value in counts.items():
        _field(monitor, field, value, "counts")


def _gaussian(x: np.ndarray, centre: Any, sigma: Any) -> np.ndarray:
    """Unit-area Gaussian: peak shapes whose amplitude is the integrated intensity."""
    return np.exp(-0.5 * ((x - centre) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


@dataclass(frozen=True)
class _Geometry:
    """A flat area detector normal to the beam: what azimuthal integration needs."""

    shape: tuple[int, int]  # (rows, columns)
    wavelength: float  # Å
    distance: float  # sample to detector, m
    pixel: float  # square pixels, m
    beam_centre: tuple[float, float]  # (x = column, y = row) in pixels from the detector corner

    def two_theta(self) -> np.ndarray:
        """Scattering angle 2θ (rad) of each pixel, its centre at index + 0.5 (pyFAI's way)."""
        rows, cols = self.shape
        x = (np.arange(cols) + 0.5 - self.beam_centre[0]) * self.pixel
        y = (np.arange(rows) + 0.5 - self.beam_centre[1]) * self.pixel
        return np.arctan(np.hypot(x[None, :], y[:, None]) / self.distance)

    def beamstop(self, radius_px: float) -> np.ndarray:
        """Pixels shadowed by a round beamstop on a vertical arm (True = shadowed)."""
        rows, cols = self.shape
        x = np.arange(cols) + 0.5 - self.beam_centre[0]
        y = np.arange(rows) + 0.5 - self.beam_centre[1]
        disc = np.hypot(x[None, :], y[:, None]) < radius_px
        arm = (np.abs(x)[None, :] < radius_px / 4) & (y[:, None] < 0)
        return disc | arm

    def write(self, instrument: h5py.Group, counts: np.ndarray, shadow: np.ndarray) -> h5py.Group:
        """The monochromator and NXdetector fields (with units) that define this geometry."""
        mono = _group(instrument, "monochromator", "NXmonochromator")
        _field(mono, "wavelength", self.wavelength, "angstrom")
        _field(mono, "energy", _HC_KEV_ANGSTROM / self.wavelength, "keV")
        detector = _group(instrument, "detector", "NXdetector")
        _field(detector, "data", counts, "counts", chunks=(128, self.shape[1]))
        _field(detector, "distance", self.distance, "m")
        _field(detector, "x_pixel_size", self.pixel, "m")
        _field(detector, "y_pixel_size", self.pixel, "m")
        _field(detector, "beam_center_x", self.beam_centre[0], "pixel")
        _field(detector, "beam_center_y", self.beam_centre[1], "pixel")
        _field(detector, "polar_angle", 0.0, "degree")
        _field(detector, "count_time", 1.0, "s")
        # NeXus pixel_mask bit 8: "user defined mask (e.g. around beamstop)".
        mask = np.where(shadow, 1 << 8, 0).astype(np.uint32)
        _field(detector, "pixel_mask", mask, chunks=(128, self.shape[1]))
        _field(detector, "description", "Hybrid photon-counting pixel detector, 75 µm pixels")
        return detector

    def image_nxdata(self, entry: h5py.Group, detector: h5py.Group) -> None:
        """NXdata showing the image with axes in mm from the direct beam, so rings look round."""
        data = _nxdata(entry, "data", "data", ["y", "x"])
        _link(data, "data", detector["data"])
        data["data"].attrs["interpretation"] = "image"
        rows, cols = self.shape
        _field(data, "x", (np.arange(cols) + 0.5 - self.beam_centre[0]) * self.pixel * 1e3, "mm")
        _field(data, "y", (np.arange(rows) + 0.5 - self.beam_centre[1]) * self.pixel * 1e3, "mm")


# -- the datasets: one writer per technique ---------------------------------------------------
#
# Each writer receives the NXentry (title, times, identifiers, NXinstrument with name and
# NXsource, NXsample with name already written) and a generator seeded from the dataset name,
# adds the technique's content and returns the name of the NXdata group to show by default.

# K-alpha1 and K-beta1 emission energies (keV, X-ray Data Booklet) of the elements in the leaf map.
_XRF_LINES_KEV = {
    "K": (3.3138, 3.5896),
    "Ca": (3.6917, 4.0127),
    "Fe": (6.4038, 7.0580),
    "Zn": (8.6389, 9.5720),
}
_XRF_INCIDENT_KEV = 10.0  # above the Zn K edge (9.659 keV), so every line above is excited
_XRF_SHAPE = (46, 57)  # (samz rows, samy columns)
_XRF_CHANNELS = 2048
_XRF_KEV_PER_CHANNEL = 0.01


def _xrf_sigma_kev(energy_kev: Any) -> Any:
    """Silicon drift detector energy resolution (sigma): electronic noise plus Fano statistics."""
    noise_fwhm, fano, pair_energy = 0.090, 0.114, 0.00385  # keV, 1, keV per electron-hole pair
    return np.sqrt((noise_fwhm / 2.355) ** 2 + fano * pair_energy * energy_kev)


def _write_xrf_map(entry: h5py.Group, rng: np.random.Generator) -> str:
    """µ-XRF map of a leaf, laid out like a beamline's NXxrf map: an MCA spectrum per pixel.

    Concentration maps (a vein rich in Zn and Fe, a Ca- and Zn-rich trichome, K throughout the
    tissue, an Fe-rich dust particle) times line spectra at the true emission energies, plus
    elastic and Compton scatter and a continuum, scaled by the incident flux and Poisson-drawn.
    """
    rows, cols = _XRF_SHAPE
    z, y = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, cols), indexing="ij")
    leaf = 1 / (1 + np.exp((y - 0.85 - 0.06 * np.sin(6 * z)) / 0.02))  # leaf edge, resin beyond
    vein = leaf * np.exp(-0.5 * ((z - 0.3 - 0.3 * y) / 0.06) ** 2)
    trichome = leaf * np.exp(-((z - 0.75) ** 2 + (y - 0.3) ** 2) / (2 * 0.07**2))
    cells = np.sin(7 * np.pi * (y + 0.03 * np.sin(9 * z))) * np.sin(5 * np.pi * (z + 0.02 * y))
    cell_walls = leaf * (1 - np.abs(cells) ** 0.3)
    dust = np.exp(-((z - 0.15) ** 2 + (y - 0.7) ** 2) / (2 * 0.025**2))
    line_counts = {  # integrated K-alpha counts per pixel at average flux
        "K": 500 * leaf * (1 - 0.5 * vein),
        "Ca": 250 * cell_walls + 2000 * trichome,
        "Fe": 30 * leaf + 300 * vein + 1500 * dust,
        "Zn": 20 * leaf + 500 * vein + 900 * trichome,
    }
    energy = np.arange(_XRF_CHANNELS) * _XRF_KEV_PER_CHANNEL

    def line(kev: float, broadening: float = 1.0) -> np.ndarray:
        return _gaussian(energy, kev, broadening * _xrf_sigma_kev(kev)) * _XRF_KEV_PER_CHANNEL

    compton_kev = _XRF_INCIDENT_KEV / (1 + _XRF_INCIDENT_KEV / 511.0)  # at 90° scattering
    entrance = 1 - np.exp(-((energy / 1.5) ** 3))  # absorption in the detector's window
    cutoff = 1 / (1 + np.exp((energy - _XRF_INCIDENT_KEV) / 0.1))  # nothing above the beam
    continuum = np.exp(-energy / 3) * entrance * cutoff
    shapes = [line(ka) + 0.13 * line(kb) for ka, kb in _XRF_LINES_KEV.values()]
    shapes += [line(_XRF_INCIDENT_KEV), line(compton_kev, 3.0), continuum / continuum.sum()]
    matter = 0.3 + leaf + vein  # scatter grows with the amount of material in the beam
    amounts = [*line_counts.values(), 150 * matter, 500 * matter, 400 * matter]

    i0 = 1.2e5 * (
        1 - 0.03 * np.linspace(0, 1, rows * cols).reshape(rows, cols)
    )  # storage ring decay
    i0 *= 1 + 0.005 * rng.standard_normal(i0.shape)
    it = 0.4 * i0 * np.exp(-0.8 * matter)
    expected = np.tensordot(np.stack(amounts, axis=-1), np.stack(shapes), axes=1)
    mca = rng.poisson(expected * (i0 / i0.mean())[..., None]).astype(np.uint32)

    instrument = entry["instrument"]
    mono = _group(instrument, "monochromator", "NXmonochromator")
    _field(mono, "energy", _XRF_INCIDENT_KEV, "keV")
    _field(mono, "wavelength", _HC_KEV_ANGSTROM / _XRF_INCIDENT_KEV, "angstrom")
    positions = {}
    for motor, count in (("samz", rows), ("samy", cols)):
        positioner = _group(instrument, motor, "NXpositioner")
        positions[motor] = _field(positioner, "value", 100.0 + 2.0 * np.arange(count), "um")
    detector = _group(instrument, "fluorescence", "NXdetector")
    _field(detector, "data", mca, "counts", chunks=(1, cols, _XRF_CHANNELS))
    _field(detector, "energy", energy, "keV")
    _field(detector, "count_time", 0.1, "s")
    _field(detector, "description", "Silicon drift detector, 10 eV per MCA channel")
    _monitor(entry, "i0", 0.1, data=i0.astype(np.float32))
    _monitor(entry, "it", 0.1, data=it.astype(np.float32))

    spectra = _nxdata(entry, "spectra", "data", ["samz", "samy", "energy"])
    _link(spectra, "data", detector["data"])
    _link(spectra, "energy", detector["energy"])
    spectra["data"].attrs["interpretation"] = "spectrum"

    # Region-of-interest counters, as the beamline records them: counts in a window per line.
    maps = _nxdata(entry, "roi_maps", "Zn", ["samz", "samy"])
    maps.attrs["auxiliary_signals"] = ["Fe", "Ca", "K"]
    for element, (kalpha, _) in _XRF_LINES_KEV.items():
        window = np.abs(energy - kalpha) <= 0.08
        roi = _field(maps, element, mca[..., window].sum(axis=-1, dtype=np.uint32), "counts")
        roi.attrs["roi_energy_range_keV"] = [kalpha - 0.08, kalpha + 0.08]
    for group in (spectra, maps):
        for motor, field in positions.items():
            _link(group, motor, field)

    sample = entry["sample"]
    _field(sample, "description", "Freeze-dried leaf section, 20 µm thick, on Ultralene film")
    return "roi_maps"


# CeO2 (NIST SRM 674b): cubic fluorite, Fm-3m. Reflections allowed for fcc (h, k, l all even
# or all odd); intensities are approximate relative peak heights.
_CEO2_A = 5.4111  # Å
_CEO2_REFLECTIONS = (
    ((1, 1, 1), 100),
    ((2, 0, 0), 30),
    ((2, 2, 0), 50),
    ((3, 1, 1), 40),
    ((2, 2, 2), 8),
    ((4, 0, 0), 7),
    ((3, 3, 1), 15),
    ((4, 2, 0), 10),
    ((4, 2, 2), 13),
)
# 0.15 m rather than a longer distance so that the 1024 px detector shows eight rings.
_CEO2_GEOMETRY = _Geometry((1024, 1024), 0.4, 0.15, 75e-6, (517.3, 509.8))


def _write_ceo2_powder(entry: h5py.Group, rng: np.random.Generator) -> str:
    """Debye-Scherrer rings of CeO2 on a flat detector, at exactly the stored geometry."""
    geo = _CEO2_GEOMETRY
    tth = geo.two_theta()
    sigma = np.radians(0.025)
    expected = 40 + 300 * np.exp(-tth / np.radians(2.0))  # air and Compton background
    for hkl, height in _CEO2_REFLECTIONS:
        d = _CEO2_A / np.sqrt(sum(i * i for i in hkl))
        peak = 2 * np.arcsin(geo.wavelength / (2 * d))
        expected += 30 * height * np.exp(-0.5 * ((tth - peak) / sigma) ** 2)
    shadow = geo.beamstop(30)
    counts = rng.poisson(np.where(shadow, 2.0, expected)).astype(np.int32)

    detector = geo.write(entry["instrument"], counts, shadow)
    geo.image_nxdata(entry, detector)
    sample = entry["sample"]
    _field(sample, "chemical_formula", "CeO2")
    _field(sample, "unit_cell_abc", [_CEO2_A] * 3, "angstrom")
    _field(sample, "unit_cell_alphabetagamma", [90.0] * 3, "degree")
    _field(sample, "space_group", "Fm-3m")
    _field(sample, "rotation_angle", 0.0, "degree")
    _monitor(entry, "monitor", 1.0, integral=2.3e9)
    return "data"


# Silver behenate: lamellar period d = 58.38 Å, rings at q_n = 2πn/d.
_AGBH_D = 58.38  # Å
_AGBH_ORDERS = (100, 25, 45, 10, 12)  # relative heights of orders 1..5
_AGBH_GEOMETRY = _Geometry((1024, 1024), 1.0, 0.75, 75e-6, (531.6, 498.2))


def _write_agbh_saxs(entry: h5py.Group, rng: np.random.Generator) -> str:
    """Silver behenate calibrant rings on a SAXS detector, at exactly the stored geometry."""
    geo = _AGBH_GEOMETRY
    q = 4 * np.pi / geo.wavelength * np.sin(geo.two_theta() / 2)  # 1/Å
    expected = 5 + 200 * (np.maximum(q, 5e-3) / 0.02) ** -3  # parasitic scatter and flat floor
    for order, height in enumerate(_AGBH_ORDERS, start=1):
        expected += 20 * height * np.exp(-0.5 * ((q - 2 * np.pi * order / _AGBH_D) / 8e-4) ** 2)
    shadow = geo.beamstop(25)
    counts = rng.poisson(np.where(shadow, 1.0, expected)).astype(np.int32)

    detector = geo.write(entry["instrument"], counts, shadow)
    geo.image_nxdata(entry, detector)
    sample = entry["sample"]
    _field(sample, "chemical_formula", "AgC22H43O2")
    _field(sample, "d_spacing", _AGBH_D, "angstrom", description="lamellar period")
    _field(sample, "aequatorial_angle", 0.0, "degree")
    _monitor(entry, "control", 1.0, integral=8.1e8)
    return "data"


# A Shepp-Logan-like 3D phantom: ellipsoids (x0, y0, z0, a, b, c, phi in degrees, density),
# in units of the half detector width, rotated about the vertical (z) rotation axis by phi.
_PHANTOM = (
    (0.0, 0.0, 0.0, 0.69, 0.92, 0.90, 0.0, 1.0),
    (0.0, -0.0184, 0.0, 0.6624, 0.874, 0.88, 0.0, -0.8),
    (0.22, 0.0, -0.25, 0.11, 0.31, 0.22, -18.0, -0.2),
    (-0.22, 0.0, -0.25, 0.16, 0.41, 0.28, 18.0, -0.2),
    (0.0, 0.35, -0.25, 0.21, 0.25, 0.41, 0.0, 0.1),
    (0.0, 0.1, -0.25, 0.046, 0.046, 0.05, 0.0, 0.1),
    (0.0, -0.1, -0.25, 0.046, 0.046, 0.05, 0.0, 0.1),
    (-0.08, -0.605, -0.25, 0.046, 0.023, 0.05, 0.0, 0.1),
    (0.0, -0.606, -0.25, 0.023, 0.023, 0.02, 0.0, 0.1),
    (0.06, -0.605, -0.25, 0.023, 0.046, 0.02, 0.0, 0.1),
    (0.06, -0.105, 0.625, 0.056, 0.04, 0.10, 90.0, 0.1),
    (0.0, 0.1, 0.625, 0.056, 0.056, 0.10, 0.0, -0.1),
)
_TOMO_PIXELS = 128
_TOMO_PIXEL_UM = 6.5
_TOMO_ANGLES = 180
_TOMO_ATTENUATION = 2.5  # -ln(transmission) per unit density and half detector width


def _phantom_projections(angles_deg: np.ndarray, pixels: int) -> np.ndarray:
    """Parallel-beam line integrals of ``_PHANTOM``, exactly: (angles, rows, columns).

    A horizontal slice of an ellipsoid is an ellipse, and an ellipse's Radon transform is
    known in closed form, so no volume is ever voxelised.
    """
    u = (np.arange(pixels) + 0.5) / pixels * 2 - 1  # detector column, across the beam
    v = 1 - (np.arange(pixels) + 0.5) / pixels * 2  # detector row, top of the image is +z
    theta = np.radians(angles_deg)[:, None, None]
    sinogram = np.zeros((len(angles_deg), pixels, pixels))
    for x0, y0, z0, a, b, c, phi, density in _PHANTOM:
        alpha2 = (a * np.cos(theta - np.radians(phi))) ** 2 + (
            b * np.sin(theta - np.radians(phi))
        ) ** 2
        scale2 = np.clip(1 - ((v[None, :, None] - z0) / c) ** 2, 0, None)
        offset = u[None, None, :] - (x0 * np.cos(theta) + y0 * np.sin(theta))
        chord2 = np.clip(alpha2 * scale2 - offset**2, 0, None)
        sinogram += 2 * density * a * b * np.sqrt(chord2) / alpha2
    return sinogram


def _phantom_volume(pixels: int, supersample: int = 2) -> np.ndarray:
    """``_PHANTOM``'s density on the detector's voxel grid: (z, y, x), +z and +y first.

    Each voxel averages ``supersample``³ points, so voxels on an edge hold the partial
    volume an ideal reconstruction would give: the ground truth a tomography course compares
    its reconstruction with. Slice k is detector row k; its rows run from +y to -y and its
    columns along x, the layout filtered back projection (skimage, algotom) produces from
    this scan's angles. A horizontal section of an ellipsoid is the ellipse scaled by
    sqrt(1 - ((z - z0)/c)²), so each ellipse is computed once and only compared per height.
    """
    n = pixels * supersample
    c = (np.arange(n) + 0.5) / n * 2 - 1
    x, y = c[None, :], c[::-1, None]
    heights = c[::-1]
    volume = np.zeros((pixels, pixels, pixels))
    for x0, y0, z0, a, b, height, phi, density in _PHANTOM:
        cos, sin = np.cos(np.radians(phi)), np.sin(np.radians(phi))
        radius2 = (((x - x0) * cos + (y - y0) * sin) / a) ** 2 + (
            (-(x - x0) * sin + (y - y0) * cos) / b
        ) ** 2
        for k, z in enumerate(heights):
            scale2 = 1 - ((z - z0) / height) ** 2
            if scale2 > 0:
                inside = (radius2 <= scale2).reshape(pixels, supersample, pixels, supersample)
                volume[k // supersample] += density * inside.mean(axis=(1, 3)) / supersample
    return volume


def _write_phantom_tomo(entry: h5py.Group, rng: np.random.Generator) -> str:
    """An NXtomo scan of the phantom: darks, flats, 180 projections over 0-180°, flats.

    Frames are in acquisition order and told apart by ``image_key`` (0 projection, 1 flat,
    2 dark), as NXtomo readers (nabu, tomwer, tomopy) expect.
    """
    n_dark, n_flat = 10, 10
    angles = np.arange(_TOMO_ANGLES) * (180.0 / _TOMO_ANGLES)
    rows = np.linspace(-1, 1, _TOMO_PIXELS)[:, None]
    cols = np.linspace(-1, 1, _TOMO_PIXELS)[None, :]
    beam = 2000 * np.exp(-0.5 * (rows / 0.9) ** 2) * (1 + 0.03 * np.sin(9 * cols + 2 * rows))
    transmission = np.exp(-_TOMO_ATTENUATION * _phantom_projections(angles, _TOMO_PIXELS))
    dark_level = 100.0

    def frames(mean: np.ndarray, count: int) -> np.ndarray:
        return rng.poisson(np.broadcast_to(mean, (count, *mean.shape[-2:]))).astype(np.uint16)

    stack = np.concatenate(
        [
            frames(np.full(beam.shape, dark_level), n_dark),
            frames(dark_level + beam, n_flat),
            frames(dark_level + beam * transmission, _TOMO_ANGLES),
            frames(dark_level + beam, n_flat),
        ]
    )
    image_key = np.concatenate(
        [np.full(n_dark, 2), np.full(n_flat, 1), np.zeros(_TOMO_ANGLES), np.full(n_flat, 1)]
    ).astype(np.int32)
    rotation = np.concatenate([np.zeros(n_dark + n_flat), angles, np.full(n_flat, 180.0)])

    detector = _group(entry["instrument"], "detector", "NXdetector")
    _field(detector, "data", stack, "counts", chunks=(1, _TOMO_PIXELS, _TOMO_PIXELS))
    _field(detector, "image_key", image_key)
    _field(detector, "x_pixel_size", _TOMO_PIXEL_UM * 1e-6, "m")
    _field(detector, "y_pixel_size", _TOMO_PIXEL_UM * 1e-6, "m")
    _field(detector, "distance", 0.05, "m")
    _field(detector, "count_time", 0.05, "s")
    _field(detector, "x_rotation_axis_pixel_position", _TOMO_PIXELS / 2 - 0.5, "pixel")
    sample = entry["sample"]
    _field(sample, "rotation_angle", rotation, "degree")
    _monitor(entry, "control", 0.05, data=rng.poisson(1.1e6, len(rotation)))

    data = _nxdata(entry, "data", "data", [".", "y", "x"])
    _link(data, "data", detector["data"])
    _link(data, "image_key", detector["image_key"])
    _link(data, "rotation_angle", sample["rotation_angle"])
    data["data"].attrs["interpretation"] = "image"
    centres = (np.arange(_TOMO_PIXELS) - (_TOMO_PIXELS - 1) / 2) * _TOMO_PIXEL_UM
    _field(data, "x", centres, "um")
    _field(data, "y", centres[::-1].copy(), "um")

    # The simulation's ground truth, which a reconstruction is checked against.
    half_width_mm = _TOMO_PIXELS / 2 * _TOMO_PIXEL_UM * 1e-3
    mu = _TOMO_ATTENUATION / half_width_mm * _phantom_volume(_TOMO_PIXELS)
    truth = _nxdata(sample, "phantom", "attenuation", ["z", "y", "x"])
    truth.attrs["title"] = "Ground truth: the phantom's linear attenuation coefficient"
    chunks = (1, _TOMO_PIXELS, _TOMO_PIXELS)
    _field(truth, "attenuation", mu.astype(np.float32), "1/mm", chunks=chunks)
    _field(truth, "z", centres[::-1].copy(), "um")
    _field(truth, "y", centres[::-1].copy(), "um")
    _field(truth, "x", centres, "um")
    return "data"


# A 1D monatomic chain: ω(q) = 2·sqrt(K/m)·|sin(q·a/2)| (nearest-neighbour springs).
_CHAIN_A = 3.0  # lattice constant, Å
_CHAIN_K = 5.0  # force constant, N/m
_CHAIN_MASS_U = 40.0  # atomic mass, u
_CHAIN_K_OVER_M = _CHAIN_K / (_CHAIN_MASS_U * 1.66053906660e-27)  # 1/s²
_CHAIN_TEMPERATURE = 50.0  # K
_CHAIN_RESOLUTION_FWHM = 0.8  # meV, Gaussian energy resolution of IN5 at Ei = 20 meV


def _chain_dispersion_mev(q: np.ndarray) -> np.ndarray:
    """Phonon energy ħω(q) of the demo chain, in meV, for q in 1/Å."""
    return _HBAR_MEV_S * 2 * np.sqrt(_CHAIN_K_OVER_M) * np.abs(np.sin(q * _CHAIN_A / 2))


def _write_chain_sqw(entry: h5py.Group, rng: np.random.Generator) -> str:
    """S(Q, ω) of the chain as IN5 reduction would give it, in NXsqom form.

    One-phonon coherent scattering ∝ Q²/ω·(n(ω)+1) on the energy-loss side and Q²/ω·n(ω) on
    the gain side (detailed balance at 50 K), a Debye-Waller factor, an incoherent elastic
    line, all convolved with the Gaussian resolution and drawn as Poisson counts.
    """
    q = np.arange(0.05, 4.2, 0.025)  # 1/Å
    en = np.arange(-6.0, 16.0, 0.1)  # energy transfer, meV (positive: neutron energy loss)
    sigma = _CHAIN_RESOLUTION_FWHM / 2.355
    omega = np.maximum(_chain_dispersion_mev(q), 0.5)  # 0.5 meV: tame the Bragg-point divergence
    bose = 1 / np.expm1(omega / (_KB_MEV_PER_K * _CHAIN_TEMPERATURE))
    weight = q**2 / omega * np.exp(-0.01 * q**2)
    e, w, n = en[:, None], omega[None, :], bose[None, :]
    phonons = weight * ((n + 1) * _gaussian(e, w, sigma) + n * _gaussian(e, -w, sigma))
    elastic = 0.5 * np.exp(-0.01 * q**2) * _gaussian(e, 0.0, sigma)
    scale = 2000.0  # counts per unit S: ~100 counts at the top of the zone-boundary phonon
    counts = rng.poisson(scale * (phonons + elastic + 0.002))
    sqw = (counts / scale).astype(np.float32)
    errors = (np.sqrt(np.maximum(counts, 1)) / scale).astype(np.float32)

    instrument = entry["instrument"]
    mono = _group(instrument, "monochromator", "NXmonochromator")
    _field(mono, "energy", 20.0, "meV")
    _field(mono, "wavelength", 9.0445 / np.sqrt(20.0), "angstrom")  # neutron: 9.0445/sqrt(E)
    _field(instrument, "energy_resolution_fwhm", _CHAIN_RESOLUTION_FWHM, "meV")
    sample = entry["sample"]
    _field(sample, "lattice_constant", _CHAIN_A, "angstrom")
    _field(sample, "force_constant", _CHAIN_K, "N/m")
    _field(sample, "atomic_mass", _CHAIN_MASS_U, "u")
    _field(sample, "force_constant_over_mass", _CHAIN_K_OVER_M, "1/s^2")
    _field(sample, "temperature", _CHAIN_TEMPERATURE, "K")
    _field(
        sample,
        "model",
        "hbar*omega(q) = hbar*2*sqrt(K/m)*|sin(q*a/2)|; one-phonon coherent S(Q, omega) with"
        " detailed balance and Debye-Waller factor exp(-0.01 Q^2), incoherent elastic line,"
        f" Gaussian energy resolution {_CHAIN_RESOLUTION_FWHM} meV FWHM",
    )
    reduction = _group(entry, "reduction", "NXprocess")
    _field(reduction, "program", "portal.demo.sampledata")
    _field(reduction, "version", __version__)
    _field(_group(reduction, "input", "NXparameters"), "filenames", "none: simulated data")
    _group(reduction, "output", "NXparameters")

    grid = _nxdata(entry, "data", "data", ["energy_transfer", "q"])
    _field(grid, "data", sqw, "arbitrary units", chunks=sqw.shape, interpretation="image")
    _field(grid, "errors", errors, "arbitrary units", chunks=errors.shape)
    _field(grid, "energy_transfer", en, "meV")
    _field(grid, "q", q, "1/angstrom")
    # NXsqom proper: the same points as a table (q along the chain, in the scattering plane).
    table = _nxdata(entry, "sqom", "data", ["qx", "en"])
    qx, energies = np.meshgrid(q, en)
    points = (qx.size,)
    _field(table, "data", sqw.ravel(), "arbitrary units", chunks=points)
    _field(table, "qx", qx.ravel(), "1/angstrom", chunks=points)
    _field(table, "qy", np.zeros(points), "1/angstrom", chunks=points)
    _field(table, "qz", np.zeros(points), "1/angstrom", chunks=points)
    _field(table, "en", energies.ravel(), "meV", chunks=points)
    table.attrs["en_indices"] = 0  # a scatter table: every axis runs along the one dimension
    return "data"


# Cu foil at the Cu K edge: one Cu-Cu shell through Larch's XAFS equation (FeffPathGroup), with
# FEFF's amplitude, phase, complex wavenumber and mean free path of fcc Cu's first shell read
# from a table FEFF6L computed once (its header says how), because the hub has no Larch.
_XAS_E0 = 8979.0  # eV, the edge energy (Cu K)
_XAS_ETOK = 0.2624682917  # k² = ETOK·(E - E0), k in 1/Å and E in eV (2m/ħ², Larch's value)
_XAS_FEFF_TABLE = Path(__file__).with_name("cu_fcc_first_shell_feff.csv")
_XAS_REFF = 2.5527  # Å, the FEFF path's half length: fcc Cu's a/√2 for a = 3.61 Å
# The true first shell. R is 0.033 Å below the FEFF path's reff on purpose: a fit that kept
# reff would miss the stored truth by more than a course's 0.02 Å tolerance.
_XAS_SHELL = {"N": 12, "R": 2.520, "sigma2": 0.0086, "S02": 0.90}
_XAS_EDGE_STEP = 1.2  # absorbance (ln I0/It)
_XAS_KMAX = 14.5  # 1/Å


def _xas_chi(k: np.ndarray) -> np.ndarray:
    """χ(k) of the shell, by the XAFS equation Larch fits with (feffdat's ``_calc_chi``).

    With the complex wavenumber p = rep + i/λ and ΔR = R - reff:
    χ = Im[N·S0²·amp/(k·R²)·exp(-2·reff·Im p - 2p²·s2 + i(2k·reff + pha + 2p(ΔR - 2·s2/reff)))]
    with s2 = sigma2 and the table's columns k, amp, pha, rep, lam, so a feffit with FEFF's own
    path recovers R, N·S0² and sigma2 without a model error.
    """
    table_k, *columns = np.loadtxt(_XAS_FEFF_TABLE, delimiter=",", unpack=True)
    amp, pha, rep, lam = (np.interp(k, table_k, column) for column in columns)
    n, r, sigma2, s02 = (_XAS_SHELL[c] for c in ("N", "R", "sigma2", "S02"))
    pp = (rep + 1j / lam) ** 2
    p = np.sqrt(pp)
    phase = 2 * k * _XAS_REFF + pha + 2 * p * (r - _XAS_REFF - 2 * sigma2 / _XAS_REFF)
    cchi = np.exp(-2 * _XAS_REFF * p.imag - 2 * pp * sigma2 + 1j * phase)
    return (n * s02 * amp * cchi / (k * r**2)).imag


def _write_cu_foil_xas(entry: h5py.Group, rng: np.random.Generator) -> str:
    """A transmission XANES/EXAFS scan of a Cu foil, in NXxas form, with its truth stored.

    μ(E) = ln(I0/It) is a falling pre-edge line plus an arctan edge step at E0 (1.5 eV core-hole
    width) times a slowly falling post-edge (1 + χ(k)); χ is switched on smoothly below
    k = 2 1/Å, where the XANES is not EXAFS. The scan steps like a beamline's: 5 eV before the
    edge, 0.5 eV across it, 0.05 1/Å in k after it, laid out from 0.3 eV above E0 - 200 eV
    so that, as at a beamline, no point falls on the true edge. I0 and It are Poisson-drawn ion
    chamber counts, so μ carries shot noise of about 1e-3.
    """
    start = _XAS_E0 + 0.3
    k_after = np.arange(np.sqrt(_XAS_ETOK * 30.0), _XAS_KMAX + 1e-9, 0.05)
    energy = np.concatenate(
        [
            np.arange(start - 200, start - 25, 5.0),
            np.arange(start - 25, start + 30, 0.5),
            start + k_after**2 / _XAS_ETOK,
        ]
    )
    above = np.clip(energy - _XAS_E0, 0, None)
    k = np.sqrt(_XAS_ETOK * above)
    onset = 1 / (1 + np.exp(-(k - 1.5) / 0.3))
    chi = np.where(k > 0.05, onset * _xas_chi(np.maximum(k, 0.05)), 0.0)
    edge = 0.5 + np.arctan((energy - _XAS_E0) / 0.75) / np.pi
    post_edge = _XAS_EDGE_STEP * edge * (1 - 1.5e-4 * above) * (1 + chi)
    mu = 0.35 - 1.5e-4 * (energy - _XAS_E0) + post_edge
    flux = 5e6 * (1 - 0.02 * np.linspace(0, 1, energy.size))  # counts per point; ring decay
    i0 = rng.poisson(flux).astype(np.int32)
    it = rng.poisson(0.8 * flux * np.exp(-mu)).astype(np.int32)  # 0.8: the It chamber's gain

    instrument = entry["instrument"]
    mono = _group(instrument, "monochromator", "NXmonochromator")
    energy_field = _field(mono, "energy", energy, "eV")
    _field(mono, "description", "Si(111) double-crystal monochromator")
    incoming = _group(instrument, "incoming_beam", "NXdetector")
    i0_field = _field(incoming, "data", i0, "counts")
    _field(incoming, "description", "Ionisation chamber before the sample (I0)")
    absorbed = _group(instrument, "absorbed_beam", "NXdetector")
    it_field = _field(absorbed, "data", it, "counts", signal=1)
    _field(absorbed, "description", "Ionisation chamber after the sample (It): transmission")
    monitor = _group(entry, "monitor", "NXmonitor")
    _field(monitor, "mode", "timer")
    _field(monitor, "preset", 1.0, "s")
    _link(monitor, "data", i0_field)

    data = _nxdata(entry, "data", "absorbed_beam", ["energy"])
    data.attrs["title"] = "Cu foil, Cu K edge, transmission: μ(E) = ln(I0/It)"
    _link(data, "energy", energy_field)
    _link(data, "absorbed_beam", it_field)
    _field(data, "mode", "Transmission")

    sample = entry["sample"]
    _field(sample, "chemical_formula", "Cu")
    _field(sample, "thickness", 7.5, "um")
    truth = _group(sample, "ground_truth", "NXcollection")
    _field(truth, "edge_energy", _XAS_E0, "eV")
    _field(truth, "first_shell_distance", _XAS_SHELL["R"], "angstrom")
    _field(truth, "coordination_number", _XAS_SHELL["N"])
    _field(truth, "sigma2", _XAS_SHELL["sigma2"], "angstrom^2")
    _field(truth, "s02", _XAS_SHELL["S02"])
    _field(
        truth,
        "model",
        "mu(E) = ln(I0/It): pre-edge line + edge step (arctan at edge_energy) x post-edge x"
        " (1 + chi(k)), k = sqrt(0.2625 (E - edge_energy)); chi(k) is one Cu-Cu shell (N, R,"
        " sigma2, S02 above) through Larch's XAFS equation with the FEFF6L path of fcc Cu's"
        f" first shell (reff = {_XAS_REFF} angstrom), E0 shift 0",
    )
    return "data"


def _write_nexus_tour(entry: h5py.Group, rng: np.random.Generator) -> str:
    """A guided file for the NeXus course: each NeXus idea once, in plain sight.

    A 1D scan with errors (the default plot), a 2D image with axes, links with ``target``
    attributes, and an NXnote saying where to look for what.
    """
    samy = np.linspace(-3, 3, 121)  # µm
    profile = 5e4 * np.exp(-0.5 * (samy / (0.6 / 2.355)) ** 2) + 200
    counts = rng.poisson(profile)
    x = np.linspace(-40, 40, 81)  # µm on the beam viewer
    y = np.linspace(-30, 30, 61)
    spot = 3000 * np.exp(-0.5 * ((x[None, :] / 8) ** 2 + (y[:, None] / 4) ** 2)) + 20
    image = rng.poisson(spot).astype(np.uint16)

    instrument = entry["instrument"]
    diode = _group(instrument, "diode", "NXdetector")
    _field(diode, "data", counts, "counts")
    _field(diode, "description", "Au fluorescence from a 0.1 µm gold wire scanned across the beam")
    positioner = _group(instrument, "samy", "NXpositioner")
    _field(positioner, "value", samy, "um")
    camera = _group(instrument, "beam_viewer", "NXdetector")
    _field(camera, "data", image, "counts")

    scan = _nxdata(entry, "beam_profile", "data", ["samy"])
    scan.attrs["title"] = "Focused beam profile: 0.6 µm FWHM"
    _link(scan, "data", diode["data"])
    _link(scan, "samy", positioner["value"])
    _field(scan, "errors", np.sqrt(np.maximum(counts, 1)), "counts")
    view = _nxdata(entry, "beam_image", "data", ["y", "x"])
    _link(view, "data", camera["data"])
    view["data"].attrs["interpretation"] = "image"
    _field(view, "x", x, "um")
    _field(view, "y", y, "um")

    note = _group(entry, "notes", "NXnote")
    _field(note, "type", "text/plain")
    _field(
        note,
        "data",
        "Start at the file's 'default' attribute: it names this entry, whose own 'default'"
        " names the NXdata group a viewer plots first (beam_profile). An NXdata group's 'signal'"
        " attribute names the plotted field, 'axes' its axes, and each field carries 'units'."
        " beam_profile/data and instrument/diode/data are one dataset (an HDF5 hard link); its"
        " 'target' attribute names the original. beam_image is a 2D image with x and y axes."
        " This file has no NXentry/definition: it follows no application definition.",
    )
    return "beam_profile"


# -- the facility: proposals, datasets, users -------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """Where the beam comes from: the NXsource fields every file carries."""

    name: str
    type: str
    probe: str


_ESRF = _Source("ESRF-EBS", "Synchrotron X-ray Source", "x-ray")
_ILL = _Source("ILL", "Reactor Neutron Source", "neutron")


@dataclass(frozen=True)
class _Dataset:
    """Everything about one dataset except its content, which ``writer`` produces."""

    name: str
    instrument: str
    source: _Source
    definition: str | None
    title: str
    description: str
    sample: str
    start: datetime
    duration: timedelta
    writer: Callable[[h5py.Group, np.random.Generator], str]
    public_date: date | None = None  # overrides the proposal's


@dataclass(frozen=True)
class _Proposal:
    """One proposal: its ``proposals.yaml`` entry (``comment`` goes above it) and datasets."""

    id: str
    title: str
    members: tuple[str, ...]
    public_date: date | None
    comment: str
    datasets: tuple[_Dataset, ...]


_PROPOSALS = (
    _Proposal(
        "MA1234",
        "Trace elements in plant leaves",
        ("alice",),
        date(2031, 6, 1),
        "Embargoed until mid-2031, except the course's NeXus tour file, released early.",
        (
            _Dataset(
                "xrf_map_0001",
                "ID21",
                _ESRF,
                "NXxrf",
                "Zn distribution in Arabidopsis leaf \N{EN DASH} \N{MICRO SIGN}-XRF",
                "Scanning X-ray fluorescence map (46 x 57 pixels, 2 µm steps) of a leaf section"
                " at 10 keV: an MCA spectrum per pixel with K, Ca, Fe and Zn lines, incident (i0)"
                " and transmitted (it) flux maps, and per-element ROI maps.",
                "Arabidopsis thaliana leaf section",
                datetime(2025, 3, 11, 14, 2, 37, tzinfo=_CET),
                timedelta(minutes=9, seconds=24),
                _write_xrf_map,
            ),
            _Dataset(
                "nexus_tour_0001",
                "ID21",
                _ESRF,
                None,
                "NeXus tour: groups, fields, attributes, links and default plots",
                "A small teaching file: a beam-profile scan with errors, a beam-viewer image, NeXus"
                " links and a note explaining how a viewer finds the default plot.",
                "Gold wire, 0.1 µm",
                datetime(2025, 3, 11, 9, 40, 0, tzinfo=_CET),
                timedelta(seconds=75),
                _write_nexus_tour,
                public_date=date(2021, 1, 1),
            ),
            _Dataset(
                "cu_foil_xas_0001",
                "ID21",
                _ESRF,
                "NXxas",
                "Cu foil reference, Cu K-edge XANES and EXAFS in transmission",
                "Transmission scan of a 7.5 µm Cu foil across the Cu K edge (8779-9776 eV, to"
                " k = 14.5 1/Å), the energy reference of the leaves' Cu: monochromator energy,"
                " I0 and It ion chamber counts. The edge energy and the first Cu-Cu shell (N,"
                " R, σ², S0²) it was simulated with are in sample/ground_truth.",
                "Cu foil, 7.5 µm",
                datetime(2025, 3, 12, 8, 15, 40, tzinfo=_CET),
                timedelta(minutes=22, seconds=5),
                _write_cu_foil_xas,
            ),
        ),
    ),
    _Proposal(
        "ES1001",
        "CeO2 powder diffraction",
        ("alice", "bob"),
        date(2031, 9, 1),
        "Shared by alice and bob; embargoed.",
        (
            _Dataset(
                "ceo2_powder_0001",
                "ID22",
                _ESRF,
                "NXmonopd",
                "CeO2 powder diffraction at 0.4 Å, 2D detector at 150 mm",
                "Debye-Scherrer rings of the CeO2 standard (a = 5.4111 Å) on a 1024 x 1024 pixel"
                " detector; wavelength, distance, beam centre and pixel size are in the file, for"
                " calibration and azimuthal integration.",
                "CeO2 (NIST SRM 674b) in a 0.5 mm capillary",
                datetime(2024, 10, 8, 21, 15, 3, tzinfo=_CEST),
                timedelta(seconds=1),
                _write_ceo2_powder,
            ),
        ),
    ),
    _Proposal(
        "IH2002",
        "Bone micro-architecture",
        ("bob",),
        date(2031, 12, 1),
        "In-house research, embargoed: alice is not a member and may not read it.",
        (
            _Dataset(
                "phantom_tomo_0001",
                "ID19",
                _ESRF,
                "NXtomo",
                "Bone test phantom, parallel-beam microtomography",
                "180 projections over 180° of a Shepp-Logan-like phantom (128 x 128 pixels,"
                " 6.5 µm), with 10 darks and 10 flats before and 10 flats after; image_key tells"
                " them apart. The phantom's true attenuation is in sample/phantom.",
                "Shepp-Logan-like bone phantom",
                datetime(2025, 1, 21, 3, 47, 12, tzinfo=_CET),
                timedelta(minutes=4, seconds=10),
                _write_phantom_tomo,
            ),
        ),
    ),
    _Proposal(
        "OD2019",
        "Silver behenate SAXS reference",
        ("carol",),
        date(2021, 1, 1),
        "Open data since 2021-01-01: everyone may read it.",
        (
            _Dataset(
                "agbh_saxs_0001",
                "ID02",
                _ESRF,
                "NXsas",
                "Silver behenate SAXS calibration, 0.75 m",
                "SAXS image of the silver behenate calibrant (d = 58.38 Å, orders 1-5) at 1.0 Å"
                " and 0.75 m on a 1024 x 1024 pixel detector, with the geometry in the file.",
                "Silver behenate powder",
                datetime(2018, 11, 27, 16, 30, 45, tzinfo=_CET),
                timedelta(seconds=1),
                _write_agbh_saxs,
            ),
        ),
    ),
    _Proposal(
        "IN5678",
        "Phonons in a 1D chain",
        ("bob",),
        None,
        "No public_date: this proposal's data never becomes open data.",
        (
            _Dataset(
                "chain_sqw_0001",
                "IN5",
                _ILL,
                "NXsqom",
                "S(Q, ω) of a monatomic chain, Ei = 20 meV, 50 K",
                "Reduced inelastic neutron scattering S(Q, ω) of a 1D monatomic chain: one acoustic"
                " phonon branch ω(q) = 2·sqrt(K/m)·|sin(q·a/2)|, with K, m and a stored in the"
                " sample group, broadened by a 0.8 meV (FWHM) Gaussian resolution.",
                "Model 1D monatomic chain",
                datetime(2025, 5, 6, 10, 5, 0, tzinfo=_CEST),
                timedelta(hours=6, minutes=30),
                _write_chain_sqw,
            ),
        ),
    ),
)


def _claims(
    username: str, sub: str, name: str, groups: list[str]
) -> dict[str, str | bool | list[str]]:
    """The OIDC claims the demo identity provider hands out, shaped like Umbrella's.

    ``proposals`` is read off ``_PROPOSALS`` so that the identity provider and
    ``proposals.yaml`` always agree on who is in which proposal.
    """
    given, family = name.split(" ", 1)
    return {
        "sub": sub,
        "preferred_username": username,
        "name": name,
        "given_name": given,
        "family_name": family,
        "email": f"{username}@example.org",
        "email_verified": True,
        "groups": groups,
        "proposals": [p.id for p in _PROPOSALS if username in p.members],
    }


#: The demo's users, keyed by username: researchers alice and bob, trainer carol, admin dave.
#: Their ``sub`` differs from the username (the portal must map claims, as with Umbrella's
#: opaque ids) but stays readable, because the demo provider's login buttons show it.
DEMO_USERS: dict[str, dict[str, Any]] = {
    "alice": _claims("alice", "alice@umbrella.demo", "Alice Moreau", ["researchers"]),
    "bob": _claims("bob", "bob@umbrella.demo", "Bob Lindqvist", ["researchers"]),
    "carol": _claims(
        "carol",
        "carol@umbrella.demo",
        "Carol Nakamura",
        ["researchers", "trainers"],
    ),
    "dave": _claims("dave", "dave@umbrella.demo", "Dave Okafor", ["admins"]),
}


_YAML_HEADER = """\
# Facility proposals: who may read what, and when data becomes open data.
#
# The portal's local catalogue re-reads this file whenever it changes: edits take effect at
# the next access check, without re-indexing the data. At a facility the user office's
# proposal database would produce it; this one was written for the demo by
# portal.demo.sampledata.
#
# proposals:
#   <proposal id>:               the first folder level of the data tree
#     title: "..."
#     members: [username, ...]   identity-provider usernames (preferred_username) who may
#                                read the proposal's data while it is embargoed
#     access_groups: [group, ...]  optional: identity-provider groups that may read it too
#     public_date: YYYY-MM-DD    end of the embargo for all its datasets: from that day on
#                                they are open data, readable by everyone. Omitted: never.
#     datasets:                  optional per-dataset overrides, keyed by the dataset's pid
#       <proposal>/<instrument>/<dataset folder>: {public_date: YYYY-MM-DD}
"""


def _proposals_yaml() -> str:
    """``proposals.yaml`` as a facility admin would write it: commented, one line per fact."""
    lines = [_YAML_HEADER, "proposals:"]
    for proposal in _PROPOSALS:
        lines.append(f"  # {proposal.comment}")
        lines.append(f"  {proposal.id}:")
        lines.append(f"    title: {json.dumps(proposal.title, ensure_ascii=False)}")
        lines.append(f"    members: [{', '.join(proposal.members)}]")
        if proposal.public_date is not None:
            lines.append(f"    public_date: {proposal.public_date.isoformat()}")
        overrides = [d for d in proposal.datasets if d.public_date is not None]
        if overrides:
            lines.append("    datasets:")
            lines += [
                f"      {proposal.id}/{d.instrument}/{d.name}: {{public_date: {d.public_date}}}"
                for d in overrides
            ]
        lines.append("")
    return "\n".join(lines)


def _write_dataset(folder: Path, proposal: _Proposal, spec: _Dataset) -> None:
    """The dataset's NeXus file, with the header every file shares, and its README.

    The file is written under a temporary name and renamed, so an interrupted run never
    leaves a half-written file that looks complete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.nxs"
    partial = path.with_name(path.name + ".part")
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    try:
        with h5py.File(partial, "w") as f:
            f.attrs.update(
                NX_class="NXroot",
                default="entry",
                file_name=path.name,
                file_time=datetime.now().astimezone().isoformat(timespec="seconds"),
                creator=_CREATOR,
                HDF5_Version=h5py.version.hdf5_version,
                h5py_version=h5py.version.version,
            )
            entry = _group(f, "entry", "NXentry")
            _field(entry, "title", spec.title)
            _field(entry, "experiment_identifier", proposal.id)
            _field(entry, "experiment_description", spec.description)
            _field(entry, "start_time", spec.start.isoformat())
            _field(entry, "end_time", (spec.start + spec.duration).isoformat())
            _field(entry, "duration", spec.duration.total_seconds(), "s")
            if spec.definition is not None:
                _field(entry, "definition", spec.definition)
            instrument = _group(entry, "instrument", "NXinstrument")
            _field(instrument, "name", spec.instrument)
            source = _group(instrument, "source", "NXsource")
            _field(source, "name", spec.source.name)
            _field(source, "type", spec.source.type)
            _field(source, "probe", spec.source.probe)
            _field(_group(entry, "sample", "NXsample"), "name", spec.sample)
            entry.attrs["default"] = spec.writer(entry, rng)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    (folder / "README.txt").write_text(
        f"{spec.title}\n\n{spec.description}\n\n"
        f"Proposal {proposal.id} ({proposal.title}), instrument {spec.instrument}, NeXus"
        f" application definition {spec.definition or 'none'}. Simulated data written by"
        " portal.demo.sampledata; not a measurement.\n",
        encoding="utf-8",
    )


def generate(root: Path, *, force: bool = False) -> list[SampleDataset]:
    """Write the demo facility tree under ``root`` and describe what is there.

    If ``root/proposals.yaml`` exists and not ``force``, nothing is written: a second demo run
    reuses the data (and keeps the catalogue index valid). ``proposals.yaml`` is written last,
    so a run that was interrupted is redone in full next time.
    """
    root = Path(root)
    specs = [(proposal, spec) for proposal in _PROPOSALS for spec in proposal.datasets]
    datasets = [
        SampleDataset(
            proposal=proposal.id,
            instrument=spec.instrument,
            name=spec.name,
            path=root / proposal.id / spec.instrument / spec.name,
            definition=spec.definition,
            public_date=spec.public_date or proposal.public_date,
        )
        for proposal, spec in specs
    ]
    proposals_file = root / _PROPOSALS_FILE
    if force or not proposals_file.exists():
        for (proposal, spec), dataset in zip(specs, datasets, strict=True):
            _write_dataset(dataset.path, proposal, spec)
        partial = proposals_file.with_name(proposals_file.name + ".part")
        partial.write_text(_proposals_yaml(), encoding="utf-8")
        partial.replace(proposals_file)
    return datasets


__all__ = ["DEMO_USERS", "SampleDataset", "generate"]
