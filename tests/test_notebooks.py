"""The courses in notebooks/: valid, stored without outputs, linted, and green in their images.

Each course runs through ``course check``'s own code: every notebook executed with nbclient in
its environment's image, on freshly generated sample data mounted as a portal server mounts
it. The notebooks' assertions check the data's ground truth: the XRF line energies, the CeO2
ring positions, the tomography reconstruction error, the phonon dispersion, the XAS edge
energy and first-shell distance; the optics course checks a simulated focus against the
analytical demagnification.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from portal.course_check import run_course
from portal.demo.sampledata import generate
from spawner.course_format import load_course, notebook_problems
from tests.support.docker_support import ensure_images
from tests.support.paths import ROOT

NOTEBOOKS = ROOT / "notebooks"
COURSES = sorted(p.parent.name for p in NOTEBOOKS.glob("*/course.yaml"))


def test_there_is_a_course_per_technique() -> None:
    assert COURSES == [
        "azimuthal-integration",
        "beamline-optics",
        "nexus-basics",
        "phonon-dispersion",
        "tomography-reconstruction",
        "xas-analysis",
        "xrf-mapping",
    ]


@pytest.mark.parametrize("name", COURSES)
def test_each_course_is_valid(name: str) -> None:
    """A course reads its data from ~/datasets, except a simulation course: it makes its own."""
    course = load_course(NOTEBOOKS / name)
    assert bool(course.datasets) is (course.environment != "simulation"), course.environment


def test_every_notebook_is_stored_without_outputs() -> None:
    stored = sorted(NOTEBOOKS.rglob("*.ipynb"))
    assert len(stored) >= len(COURSES)
    assert [problem for path in stored for problem in notebook_problems(path)] == []


def test_the_notebooks_code_is_linted_and_formatted() -> None:
    ruff = [sys.executable, "-m", "ruff"]
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run([*ruff, *command, str(NOTEBOOKS)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "data"
    generate(root)
    return root


@pytest.mark.docker
@pytest.mark.parametrize("name", COURSES)
def test_each_course_runs_green_on_the_sample_data(name: str, sample_data: Path) -> None:
    course = load_course(NOTEBOOKS / name)
    ensure_images(course.environment)
    results = list(run_course(course, sample_data))
    assert [r.notebook for r in results] == list(course.notebooks)
    failed = [r.describe() for r in results if not r.ok]
    assert not failed, "\n".join(failed)
