"""Smoke test of simulation (see images/smoke.py): one tiny simulation with each package.

Each runs in about a second and checks its result against a number known without the
package (geometric optics, Gaussian beam optics, the Bragg cut-off of aluminium), so that a
broken compiled core or a wrong unit shows as a failure, not only a failed import.
"""

from __future__ import annotations

import ctypes
import math
import tempfile
from pathlib import Path

import numpy as np


def rms(x: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Root-mean-square width of ``x`` about its (weighted) mean."""
    mean = np.average(x, weights=weights)
    return float(np.sqrt(np.average((x - mean) ** 2, weights=weights)))


def close(value: float, expected: float, rel: float) -> bool:
    """Whether ``value`` is within ``rel`` (relative) of ``expected``."""
    return abs(value - expected) <= rel * abs(expected)


def test_xrt_ellipsoid_images_the_source() -> None:
    import xrt.backends.raycing as raycing
    import xrt.backends.raycing.oes as roe
    import xrt.backends.raycing.screens as rsc
    import xrt.backends.raycing.sources as rs

    p, q, pitch = 20000.0, 5000.0, 4e-3  # mm, mm, rad
    beamline = raycing.BeamLine()
    source = rs.GeometricSource(
        beamline,
        "source",
        nrays=5000,
        distx="normal",
        dx=0.1,
        distz="normal",
        dz=0.02,
        distxprime="normal",
        dxprime=2e-5,
        distzprime="normal",
        dzprime=2e-5,
        distE="lines",
        energies=(9000.0,),
    )
    mirror = roe.EllipticalMirrorParam(beamline, "mirror", center=(0, p, 0), pitch=pitch, p=p, q=q)
    up = 2 * pitch  # the reflected beam's angle to the horizontal
    screen = rsc.Screen(
        beamline,
        "focus",
        center=(0, p + q * math.cos(up), q * math.sin(up)),
        z=(0, -math.sin(up), math.cos(up)),
    )
    reflected, _ = mirror.reflect(source.shine())
    spot = screen.expose(reflected)
    good = spot.state == 1
    assert good.sum() == 5000, good.sum()
    assert close(rms(spot.x[good]), 0.1 * q / p, 0.05), rms(spot.x[good])
    assert close(rms(spot.z[good]), 0.02 * q / p, 0.05), rms(spot.z[good])


def test_shadow4_samples_a_gaussian_source() -> None:
    from shadow4.sources.source_geometrical.source_geometrical import SourceGeometrical

    source = SourceGeometrical(nrays=5000, seed=5676561)
    source.set_spatial_type_gaussian(sigma_h=100e-6, sigma_v=20e-6)  # m
    source.set_angular_distribution_gaussian(sigdix=20e-6, sigdiz=10e-6)
    source.set_energy_distribution_singleline(9000.0, unit="eV")
    beam = source.get_beam()
    assert beam.get_number_of_rays() == 5000
    assert close(rms(beam.get_column(1)), 100e-6, 0.05)  # x
    assert close(rms(beam.get_column(3)), 20e-6, 0.05)  # z
    assert np.allclose(beam.get_column(26), 9000.0)  # photon energy, eV


def test_wofry_gaussian_beam_spreads_by_diffraction() -> None:
    from syned.beamline.beamline_element import BeamlineElement
    from syned.beamline.element_coordinates import ElementCoordinates
    from wofry.propagator.propagator import (
        PropagationElements,
        PropagationManager,
        PropagationParameters,
    )
    from wofry.propagator.wavefront1D.generic_wavefront import GenericWavefront1D
    from wofryimpl.beamline.optical_elements.ideal_elements.screen import WOScreen1D
    from wofryimpl.propagator.propagators1D.fresnel_zoom import FresnelZoom1D

    wavelength, distance = 1e-10, 30.0  # m
    wavefront = GenericWavefront1D.initialize_wavefront_from_range(
        -100e-6, 100e-6, number_of_points=2048, wavelength=wavelength
    )
    wavefront.set_gaussian(5e-6)
    x = wavefront.get_abscissas()
    waist = rms(x, wavefront.get_intensity())
    elements = PropagationElements()
    elements.add_beamline_element(
        BeamlineElement(WOScreen1D(), ElementCoordinates(p=distance, q=0.0)),
        {"magnification_x": 4.0},
    )
    manager = PropagationManager.Instance()
    if not manager.has_propagator(FresnelZoom1D.HANDLER_NAME):
        manager.add_propagator(FresnelZoom1D())
    propagated = manager.do_propagation(
        PropagationParameters(wavefront=wavefront, propagation_elements=elements),
        FresnelZoom1D.HANDLER_NAME,
    )
    size = rms(propagated.get_abscissas(), propagated.get_intensity())
    # Intensity RMS of a Gaussian beam: sigma(z)^2 = sigma0^2 + (z lambda / (4 pi sigma0))^2.
    expected = math.hypot(waist, distance * wavelength / (4 * math.pi * waist))
    assert close(size, expected, 0.03), (size, expected)


def test_srw_gaussian_beam_field() -> None:
    from array import array

    from srwpy import srwlib

    sigma, distance = 5e-6, 30.0  # intensity RMS at the waist, m
    beam = srwlib.SRWLGsnBm(_avgPhotEn=12398.4, _pulseEn=1e-3, _sigX=sigma, _sigY=sigma)
    wavefront = srwlib.SRWLWfr()
    wavefront.allocate(1, 101, 101)
    mesh = wavefront.mesh
    mesh.zStart, mesh.eStart, mesh.eFin = distance, beam.avgPhotEn, beam.avgPhotEn
    mesh.xStart, mesh.xFin, mesh.yStart, mesh.yFin = -250e-6, 250e-6, -250e-6, 250e-6
    srwlib.srwl.CalcElecFieldGaussian(wavefront, beam, [0])
    intensity = array("f", [0.0] * mesh.nx * mesh.ny)
    srwlib.srwl.CalcIntFromElecField(intensity, wavefront, 6, 0, 3, mesh.eStart, 0, 0)
    image = np.asarray(intensity).reshape(mesh.ny, mesh.nx)
    x = np.linspace(mesh.xStart, mesh.xFin, mesh.nx)
    size = rms(x, image.sum(axis=0))
    wavelength = 1.23984e-6 / beam.avgPhotEn  # m
    expected = math.hypot(sigma, distance * wavelength / (4 * math.pi * sigma))
    assert close(size, expected, 0.03), (size, expected)


def test_ncrystal_aluminium_bragg_edge() -> None:
    import NCrystal

    aluminium = NCrystal.load("Al_sg225.ncmat;temp=293.15K")
    # The longest wavelength that Bragg-scatters is twice the largest d-spacing, d(111).
    edge = 2 * aluminium.info.dspacingFromHKL(1, 1, 1)
    assert close(edge, 4.676, 0.005), edge
    below, above = aluminium.scatter.xsect(wl=[edge - 0.05, edge + 0.05])
    # Coherent elastic scattering (about 1.4 barn per atom) stops at the edge.
    assert 1.0 < below - above < 2.0, (below, above)


def test_mcpl_file_written_and_read_back() -> None:
    import mcpl
    from _mcpl_core.info import libpath

    class Particle(ctypes.Structure):
        """mcpl_particle_t of mcpl.h (packed; the doubles come first, so no padding)."""

        _pack_ = 1
        _fields_ = [
            ("ekin", ctypes.c_double),
            ("polarisation", ctypes.c_double * 3),
            ("position", ctypes.c_double * 3),
            ("direction", ctypes.c_double * 3),
            ("time", ctypes.c_double),
            ("weight", ctypes.c_double),
            ("pdgcode", ctypes.c_int32),
            ("userflags", ctypes.c_uint32),
        ]

    class OutFile(ctypes.Structure):
        _fields_ = [("internal", ctypes.c_void_p)]

    lib = ctypes.CDLL(str(libpath()))
    lib.mcpl_create_outfile.restype = OutFile
    lib.mcpl_create_outfile.argtypes = [ctypes.c_char_p]
    lib.mcpl_hdr_set_srcname.argtypes = [OutFile, ctypes.c_char_p]
    lib.mcpl_add_particle.argtypes = [OutFile, ctypes.POINTER(Particle)]
    lib.mcpl_close_outfile.argtypes = [OutFile]

    energies_mev = np.linspace(1e-9, 100e-9, 10)  # thermal and cold neutrons
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "neutrons.mcpl"
        out = lib.mcpl_create_outfile(str(path).encode())
        lib.mcpl_hdr_set_srcname(out, b"panosc smoke test")
        for ekin in energies_mev:
            particle = Particle(ekin=ekin, weight=1.0, pdgcode=2112)
            particle.direction[:] = (0.0, 0.0, 1.0)
            lib.mcpl_add_particle(out, ctypes.byref(particle))
        lib.mcpl_close_outfile(out)
        with mcpl.MCPLFile(str(path)) as f:
            assert f.nparticles == 10 and f.sourcename == "panosc smoke test"
            block = next(iter(f.particle_blocks))
            assert np.allclose(block.ekin, energies_mev, rtol=1e-6)
            assert set(block.pdgcode) == {2112}
            assert np.allclose(block.uz, 1.0)
