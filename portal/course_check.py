"""``course check``'s runner: a course's notebooks, run where a student runs them.

Every notebook runs with nbclient in a container of the environment's image, with the
datasets mounted read-only under ``~/datasets`` with their ``datasets.json`` (the spawner's own
mount plan), after the course has been delivered into ``~/courses/<name>/`` exactly as a course
link delivers it into a Docker server (:mod:`spawner.course_library`, :mod:`spawner.docker`).
The notebooks are run by :mod:`portal.notebook_runner`, as the student, with the image's Python.
The datasets come from a local data tree. ``panosc-portal course check`` (:mod:`portal.cli`)
validates a course folder (:mod:`spawner.course_format`), then calls :func:`run_course`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portal import notebook_runner
from spawner.course_delivery import COURSE_FILE
from spawner.course_format import Course, CourseError
from spawner.course_library import course_archive, delivery_command
from spawner.environments import load_environments

CHECK_LABEL = "org.panosc.portal.course-check"


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


def _reports(
    chunks: Iterable[tuple[bytes | None, bytes | None]], errors: bytearray
) -> Iterator[dict[str, Any]]:
    """The JSON lines :mod:`portal.notebook_runner` prints, from a stream of its output's
    (stdout, stderr) chunks; what it printed on stderr is added to ``errors``."""
    pending = b""
    for out, err in chunks:
        errors += err or b""
        pending += out or b""
        *complete, pending = pending.split(b"\n")
        yield from (json.loads(line) for line in complete if line.startswith(b"{"))


def run_course(course: Course, data_root: Path, timeout: int = 600) -> Iterator[NotebookResult]:
    """Run the course's notebooks in order in its environment's image; results as they finish.

    The container has no network (a course must not depend on one) and is removed afterwards.
    The course is delivered as :meth:`spawner.docker.PortalDockerSpawner.sync_course` delivers
    it, within ``timeout`` seconds, and ``timeout`` is also what a cell may take.
    """
    import docker
    from docker.errors import DockerException, ImageNotFound

    from spawner.common import JOVYAN_GID, JOVYAN_UID
    from spawner.docker import exec_bounded

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
    user = f"{JOVYAN_UID}:{JOVYAN_GID}"
    program = Path(notebook_runner.__file__).read_text(encoding="utf-8")
    folder = f"~/courses/{course.name}"
    run = ["python", "-I", "-c", program, folder, *course.notebooks, "--timeout", str(timeout)]
    with tempfile.TemporaryDirectory(prefix="panosc-course-check-") as scratch:
        container = client.containers.create(
            image,
            ["sleep", "infinity"],  # a server to deliver into and run in, as a student's is
            mounts=_dataset_mounts(course, Path(data_root).resolve(), Path(scratch)),
            network_mode="none",
            user=user,
            labels={CHECK_LABEL: course.name},
        )
        try:
            archive = course_archive(course.folder, course.name, JOVYAN_UID, JOVYAN_GID)
            container.put_archive("/", archive)
            container.start()
            sync = delivery_command(course.name)
            code, out, err = exec_bounded(client.api, container.id, sync, user, timeout)
            errors, reported = bytearray(), set()
            if code:
                errors += b"the delivery failed: " + (err or out)
            else:
                _, stream = container.exec_run(run, user=user, stream=True, demux=True)
                for report in _reports(stream, errors):
                    result = NotebookResult(**report)
                    reported.add(result.notebook)
                    yield result
            for notebook in course.notebooks:
                if notebook not in reported:
                    error = errors.decode(errors="replace")[-2000:]
                    yield NotebookResult(notebook, False, 0.0, error=f"did not run: {error}")
        finally:
            container.remove(force=True)
