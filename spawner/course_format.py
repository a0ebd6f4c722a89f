"""What a course is: its name, where it may come from, and its folder's ``course.yaml``.

The one copy of these rules: ``portal.yaml``'s ``courses:`` section (:mod:`portal.settings`),
the hub's course library (:mod:`spawner.course_library`), the course pages and
``panosc-portal course check`` all read courses through this module.

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

Its source, in ``portal.yaml``: a folder on the hub, or a git repository (``git``, with an
optional ``ref`` and ``subdir``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from jupyterhub.slugs import is_valid_safe_slug, safe_slug
from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from portal.yamlfile import Document, Strict, Text, YamlFileError
from spawner.course_delivery import COURSE_FILE
from spawner.environments import Environment, load_environments

# -- names: a course's, and its server's ------------------------------------------------------

SERVER_PREFIX = "course-"
#: A course name: part of a URL and a folder name, and the start of its server's name.
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def server_name(course: str) -> str:
    """The named server a course runs in, one per course and student: ``course-<name>``.

    JupyterHub 6 takes a server name only if it is a safe slug (30 characters at most; lower-case
    letters, digits and single hyphens; a letter first, no hyphen last) and answers 400 to a
    link to any other. A course name that would break that rule (over 23 characters, or with
    ``--``) gets JupyterHub's own shortening instead: a readable start and a hash of the whole
    name, ``course-tomography-rec-88075728``. So every course name works; since a hash cannot
    be read back, :func:`spawner.course_library.course_of_server` looks the course up rather
    than parsing the name.
    """
    return safe_slug(SERVER_PREFIX + course, is_valid=is_valid_safe_slug)


def server_names(courses: Iterable[str]) -> dict[str, str]:
    """Server name -> course, for each of ``courses``: how a server leads back to its course.

    Raises :class:`ValueError`, naming both, when two courses would share a server: in practice
    only when a trainer names a course after another one's shortened name.
    """
    found: dict[str, str] = {}
    for course in courses:
        server = server_name(course)
        other = found.setdefault(server, course)
        if other != course:
            raise ValueError(
                f"courses {other!r} and {course!r} would both run in the server {server!r};"
                " rename one of them"
            )
    return found


def check_names(courses: Iterable[str]) -> None:
    """Refuse, with :class:`ValueError`, a name that is not a course name (:data:`NAME`) or
    two names that would share a server."""
    courses = list(courses)
    for name in courses:
        if not NAME.fullmatch(name):
            raise ValueError(
                f"course name {name!r}: use lower-case letters, digits and '-' (40 at most)"
            )
    server_names(courses)  # any such name makes a server name; two must not make one


# -- sources: where a course's folder is ------------------------------------------------------


class CourseSource(Strict):
    """Where a course folder is: a folder on the hub (also written as a plain path) or git."""

    folder: Path | None = Field(None, description="The course folder, with its course.yaml.")
    git: str | None = Field(None, description="A git repository: URL, or path on the hub.")
    ref: str | None = Field(None, description="Branch or tag (default: the repository's).")
    subdir: str = Field("", description="The course folder inside the repository.")

    @model_validator(mode="before")
    @classmethod
    def _plain_path(cls, value: Any) -> Any:
        return {"folder": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> CourseSource:
        if (self.folder is None) == (self.git is None):
            raise ValueError("give a folder (a path) or a git repository (git: URL), not both")
        if self.folder is not None and (self.ref or self.subdir):
            raise ValueError("ref and subdir go with git, not with a folder")
        if PurePosixPath(self.subdir).is_absolute() or ".." in PurePosixPath(self.subdir).parts:
            raise ValueError(f"subdir {self.subdir!r} must be a relative path in the repository")
        return self


# -- course.yaml and the folder it describes --------------------------------------------------


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
