"""Course folders: the ``course.yaml`` format, its checks, and ``panosc-portal course check``.

A course is a folder a trainer writes and lists in ``portal.yaml``::

    course.yaml      title, description, environment, notebooks (in order), datasets
    *.ipynb          the notebooks, stored without outputs
    ...              anything else they need (images, small files)

``course.yaml``::

    title: Azimuthal integration with pyFAI
    description: Integrate CeO2 Debye-Scherrer rings and find them where the lattice puts them.
    environment: diffraction               # a name from images/environments.yaml
    notebooks: [azimuthal-integration.ipynb]
    datasets: [ES1001/ID22/ceo2_powder_0001]   # pids mounted under ~/datasets (optional)

``course check`` validates the folder, then runs every notebook with nbclient where a student
runs it: in a container of the environment's image, with the datasets mounted read-only under
``~/datasets`` with their ``datasets.json`` (the spawner's own mount plan), and the course
delivered into ``~/courses/<name>/`` by the code a course link uses (:mod:`spawner.courses`).
The datasets come from a local data tree, by default the generated sample data.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, ValidationInfo, field_validator

from portal.yamlfile import Document, Strict, Text, YamlFileError
from spawner.courses import COURSE_FILE, container_command, course_archive
from spawner.environments import Environment, load_environments

CHECK_LABEL = "org.panosc.portal.course-check"


class CourseError(YamlFileError):
    """A course folder is invalid; each problem names the file and line, and the field or cell."""


@dataclass(frozen=True)
class Course:
    """A valid course folder, as ``course.yaml`` describes it."""

    folder: Path
    title: str
    description: str
    environment: str
    notebooks: tuple[str, ...]
    datasets: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The folder's name as a course name: where ``course check`` delivers the course."""
        words = "".join(c if c.isalnum() else " " for c in self.folder.resolve().name.lower())
        return "-".join(words.split())[:40].strip("-") or "course"


def _unique(names: list[str]) -> list[str]:
    duplicates = sorted({v for v in names if names.count(v) > 1})
    if duplicates:
        raise ValueError(f"listed twice: {', '.join(duplicates)}")
    return names


Names = Annotated[list[Annotated[str, StringConstraints(min_length=1)]], AfterValidator(_unique)]


class CourseFile(Strict):
    """``course.yaml``. The environment is checked against the table given as the
    validation context's ``environments``."""

    title: Text
    description: Text
    environment: str
    notebooks: Names
    datasets: Names = Field(default_factory=list)

    @field_validator("environment")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get("environments")
        known = load_environments() if known is None else known
        if name not in known:
            raise ValueError(f"{name!r} is not an environment; choose one of {', '.join(known)}")
        return name

    @field_validator("notebooks")
    @classmethod
    def _some(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("list at least one notebook")
        return names


def _notebook_paths(course: Path, notebooks: tuple[str, ...]) -> list[str]:
    """Problems with the listed notebooks: each must be a course file, and each file listed."""
    problems = []
    for name in notebooks:
        path = PurePosixPath(name)
        if path.suffix != ".ipynb" or path.is_absolute() or ".." in path.parts:
            problems.append(f"{name!r} must be a .ipynb path inside the course folder")
        elif any(part.startswith(".") for part in path.parts):
            problems.append(f"{name!r} is hidden; students would never receive it")
        elif not (course / name).is_file():
            problems.append(f"{name!r} does not exist in {course}")
    listed = set(notebooks)
    for found in sorted(course.rglob("*.ipynb")):
        rel = found.relative_to(course).as_posix()
        hidden = any(p.startswith(".") for p in found.relative_to(course).parts)
        if rel not in listed and not hidden:
            problems.append(
                f"{rel} is in the folder but not listed; list it (so that it is checked)"
                " or remove it"
            )
    return problems


def notebook_problems(path: Path) -> list[str]:
    """What keeps a stored notebook from being a course notebook, one message per problem.

    It must be nbformat 4.5 or later (cells have ids, which course updates merge by) and be
    stored without outputs: outputs belong to the student's run, they bloat the repository
    and make every update look like an edit.
    """
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        cells = nb["cells"]
        version = (nb["nbformat"], nb["nbformat_minor"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"{path}: not a Jupyter notebook: {e}"]
    if version < (4, 5):
        return [
            f"{path}: nbformat {version[0]}.{version[1]}: save it with JupyterLab 3 or later"
            " (nbformat 4.5: cells get the ids that course updates merge by)"
        ]
    problems = []
    for number, cell in enumerate(cells, start=1):
        where = f"{path}: cell {number}"
        if not cell.get("id"):
            problems.append(f"{where}: has no id (save the notebook with JupyterLab 3 or later)")
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(
                f"{where}: has outputs or an execution count; notebooks are stored without"
                f" outputs: clear them (JupyterLab: Edit > Clear Outputs of All Cells, or"
                f" jupyter nbconvert --clear-output --inplace {path.name})"
            )
    return problems


def load_course(folder: Path, environments: Mapping[str, Environment] | None = None) -> Course:
    """Read and validate a course folder; :class:`CourseError` lists every problem found."""
    folder = Path(folder)
    source = folder / COURSE_FILE
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CourseError([f"{source}: no such file; a course folder needs one"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CourseError([f"{source}: cannot read it: {e}"]) from None
    try:
        doc = Document(text, str(source))
        course = doc.validate(CourseFile, {"environments": environments})
    except YamlFileError as e:
        raise CourseError(e.problems) from None
    problems = [
        doc.problem(("notebooks",), problem)
        for problem in _notebook_paths(folder, tuple(course.notebooks))
    ]
    for name in course.notebooks:
        if (folder / name).is_file():
            problems += notebook_problems(folder / name)
    if problems:
        raise CourseError(problems)
    return Course(
        folder,
        course.title,
        course.description,
        course.environment,
        tuple(course.notebooks),
        tuple(course.datasets),
    )


# -- course check: run the notebooks where students run them ----------------------------------


@dataclass(frozen=True)
class NotebookResult:
    """One notebook's run: ``cell`` (1-based) is where it failed, with the error and source."""

    notebook: str
    ok: bool
    seconds: float
    cell: int | None = None
    error: str = ""
    source: str = ""

    def describe(self) -> str:
        """The report's lines for this notebook; a failure quotes the cell's source."""
        if self.ok:
            return f"{self.notebook}: ok ({self.seconds:.1f} s)"
        where = f"cell {self.cell}" if self.cell else "starting the kernel"
        lines = [f"{self.notebook}: {where} failed ({self.seconds:.1f} s): {self.error}"]
        lines += [f"    | {line}" for line in self.source.splitlines()[:10]]
        return "\n".join(lines)


def _dataset_mounts(course: Course, data_root: Path, scratch: Path) -> list[Any]:
    """The course's datasets mounted as a portal server mounts them, from a local data tree.

    The tree is indexed like the portal's local catalogue and the spawner's own mount plan
    places each dataset, so paths and ``datasets.json`` are exactly what a student gets.
    """
    from portal.catalogue import CatalogueUser, DatasetNotFound
    from portal.catalogue.local import LocalCatalogue
    from spawner.docker import docker_mounts
    from spawner.mounts import StorageRoot, plan_mounts

    catalogue = LocalCatalogue(data_root=str(data_root), index_path=str(scratch / "index.sqlite"))
    catalogue.index()
    # The checker reads every proposal of the tree, as a member would.
    proposals = frozenset(p.name for p in data_root.iterdir() if p.is_dir())
    checker = CatalogueUser("course-check", proposals=proposals)
    datasets, problems = [], []
    for pid in course.datasets:
        try:
            datasets.append(catalogue.get(pid, checker))
        except DatasetNotFound:
            problems.append(
                f"{course.folder / COURSE_FILE}: datasets: {pid!r} is not in the data tree"
                f" {data_root}"
            )
    if problems:
        raise CourseError(problems)
    plan = plan_mounts(datasets, [StorageRoot(str(data_root), str(data_root))])
    manifest = scratch / "datasets.json"
    manifest.write_text(plan.manifest_json(), encoding="utf-8")
    manifest.chmod(0o644)
    return docker_mounts(plan, manifest)


def _reports(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON lines the container program prints, from a stream of log chunks."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (json.loads(line) for line in complete if line.startswith(b"{"))


def run_course(course: Course, data_root: Path, timeout: int = 600) -> Iterator[NotebookResult]:
    """Run the course's notebooks in order in its environment's image; results as they finish.

    The container has no network (a course must not depend on one) and is removed afterwards.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound

    from spawner.common import JOVYAN_GID, JOVYAN_UID

    image = load_environments()[course.environment].image
    try:
        client = docker.from_env()
        client.images.get(image)
    except ImageNotFound:
        raise CourseError(
            [
                f"{course.folder / COURSE_FILE}: environment {course.environment!r} needs the"
                f" image {image}, which is not on this Docker host; build it with:"
                f" panosc-portal images build {course.environment}"
            ]
        ) from None
    except DockerException as e:
        raise CourseError([f"course check runs notebooks in Docker, which fails: {e}"]) from None
    command = container_command(
        "run", course.name, *course.notebooks, "--timeout", str(timeout), python="python"
    )
    with tempfile.TemporaryDirectory(prefix="panosc-course-check-") as scratch:
        container = client.containers.create(
            image,
            command,
            mounts=_dataset_mounts(course, Path(data_root).resolve(), Path(scratch)),
            network_mode="none",
            user=f"{JOVYAN_UID}:{JOVYAN_GID}",
            labels={CHECK_LABEL: course.name},
        )
        try:
            archive = course_archive(course.folder, course.name, JOVYAN_UID, JOVYAN_GID)
            container.put_archive("/", archive)
            container.start()
            reported = set()
            output = _reports(container.logs(stream=True, follow=True, stdout=True, stderr=False))
            next(output, None)  # the delivery's report: a fresh folder, every file added
            for report in output:
                result = NotebookResult(**report)
                reported.add(result.notebook)
                yield result
            container.wait()
            errors = container.logs(stdout=False, stderr=True).decode(errors="replace")
            for notebook in course.notebooks:
                if notebook not in reported:
                    yield NotebookResult(
                        notebook, False, 0.0, error=f"did not run: {errors[-2000:]}"
                    )
        finally:
            container.remove(force=True)


def check(folders: list[Path], data_root: Path | None, timeout: int, execute: bool) -> int:
    """``course check``: validate each folder and run its notebooks; the exit status."""
    from portal.demo.sampledata import generate

    failures = 0
    with tempfile.TemporaryDirectory(prefix="panosc-course-data-") as scratch:
        for folder in folders:
            try:
                course = load_course(folder)
                print(
                    f"{folder}: {course.title!r}, {len(course.notebooks)} notebook(s) in the"
                    f" {course.environment} environment"
                )
                if not execute:
                    continue
                if data_root is None:
                    data_root = Path(scratch) / "sample-data"
                    generate(data_root)
                for result in run_course(course, data_root, timeout):
                    print("  " + result.describe(), flush=True)
                    failures += not result.ok
            except CourseError as e:
                print("\n".join(e.problems), file=sys.stderr)
                failures += 1
    return 1 if failures else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``course check`` on the ``panosc-portal`` command line."""
    course = sub.add_parser("course", help="check notebook courses").add_subparsers(
        dest="action", required=True
    )
    c = course.add_parser(
        "check",
        help="validate course folders and run their notebooks in their environments",
        description="Validate each course folder (course.yaml, notebooks stored without"
        " outputs), then run every notebook with nbclient in a container of the course's"
        " environment, with its datasets mounted under ~/datasets as the portal mounts them.",
    )
    c.add_argument("folders", nargs="+", type=Path, help="course folders (with course.yaml)")
    c.add_argument(
        "--data",
        type=Path,
        default=None,
        help="data tree the datasets come from, laid out <root>/<proposal>/<instrument>/"
        "<dataset>/ (default: freshly generated sample data)",
    )
    c.add_argument("--timeout", type=int, default=600, help="seconds a cell may run (600)")
    c.add_argument(
        "--no-execute",
        dest="execute",
        action="store_false",
        help="only validate the folders and notebooks (no Docker needed)",
    )
    c.set_defaults(func=lambda args: check(args.folders, args.data, args.timeout, args.execute))
