"""The environments table (``images/environments.yaml``), read and checked in one place.

The spawner, the spawn form, the deep link, the Helm pre-puller and the image build tool
all need the same facts (which image, which techniques, which server types), so they all
call :func:`load_environments` or :func:`load_images` instead of listing images themselves.

The canonical file is ``images/environments.yaml``, next to the Dockerfiles it describes.
``spawner/environments.yaml`` is a symlink to it: an editable install reads the canonical
file through the link, and a wheel (the hub image installs one) carries a copy, because
building a wheel copies the file the link points to (``package-data`` in pyproject.toml).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StrictFloat, StrictInt

from portal import __version__
from portal.catalogue import techniques
from portal.yamlfile import Document, Strict, Text, YamlFileError

#: The table as shipped: a symlink to images/environments.yaml in a source tree, a copy in a wheel.
DATA_FILE = Path(__file__).with_name("environments.yaml")

SERVER_TYPES = ("lab", "desktop")

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_.{}-]+")
#: A Python distribution's name as PyPI spells it (PEP 508).
_DISTRIBUTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,60}[A-Za-z0-9])?")
#: The portal's own images, each a top-level key of the table: the Helm chart runs them, users
#: are never offered them.
SERVICES = ("hub", "proxy")


#: The file ``panosc-portal images export`` writes in each environment it unpacks for the
#: Slurm backend: the image, its id (the provenance record's digest) and its ``PATH``.
UNPACKED_FILE = ".panosc-environment.json"


class EnvironmentsError(YamlFileError, ValueError):
    """The table is wrong; each problem names the file, the line, the entry and the field."""


@dataclass(frozen=True)
class Image:
    """An image the build tool makes: ``images/<name>/Dockerfile``, tagged ``image``.

    ``parent`` is the name of the image it is built FROM, or ``None`` for one built from
    plain Debian (base, proxy), which is what orders a build.
    """

    name: str
    image: str
    parent: str | None


@dataclass(frozen=True)
class Environment(Image):
    """An environment users can start: an image plus what the spawn form needs to offer it.

    ``techniques`` are PaNET ids; empty means the environment suits any technique.
    ``cpu`` (cores) and ``memory`` (like ``4G``) are a hint for the spawner's limits.
    ``software`` names the Python distributions a researcher picks it for; their versions
    are not in the table but read from the image (:mod:`spawner.software`), so the spawn
    form never shows a version the image does not have.
    """

    description: str
    techniques: tuple[str, ...]
    server_types: tuple[str, ...]
    cpu: float
    memory: str
    software: tuple[str, ...] = ()

    def serves(self, technique: str) -> bool:
        """Whether this environment is made for a dataset tagged ``technique`` (a PaNET id).

        True when one of its techniques is the technique itself or above it in PaNET, so an
        environment for "small angle scattering" serves a SAXS dataset. A technique the portal
        does not know (catalogues may use more of PaNET) is served by the general environments.
        """
        if not self.techniques:
            return True
        try:
            return bool(set(self.techniques) & techniques.ancestors(technique))
        except techniques.UnknownTechnique:
            return False


def load_environments(path: Path | None = None) -> dict[str, Environment]:
    """The environments users can start, by name, in the file's order."""
    return {name: i for name, i in _load(path or DATA_FILE).items() if isinstance(i, Environment)}


def load_images(path: Path | None = None) -> dict[str, Image]:
    """Every image to build (the environments, the hub and the proxy), by name, parents first."""
    return _load(path or DATA_FILE)


# -- the file's format ----------------------------------------------------------------------


def _image(value: str) -> str:
    if not _IMAGE.fullmatch(value):
        raise ValueError(f"must look like 'panosc/base:{{version}}', got {value!r}")
    return value.replace("{version}", __version__)


def _name(value: str) -> str:
    if not _NAME.fullmatch(value) or value in SERVICES:
        raise ValueError(
            "must be lower-case letters, digits and '-'"
            f" (not {' or '.join(map(repr, SERVICES))}), got {value!r}"
        )
    return value


def _technique(pid: str) -> str:
    try:
        known = techniques.get(pid).pid
    except techniques.UnknownTechnique as e:
        raise ValueError(str(e)) from None
    if known != pid:
        raise ValueError(f"write the PaNET id {known!r}, not {pid!r}")
    return pid


def _software(names: list[str]) -> list[str]:
    for name in names:
        if not _DISTRIBUTION.fullmatch(name):
            raise ValueError(f"{name!r} is not a Python distribution name")
    if len({re.sub(r"[-_.]+", "-", n).lower() for n in names}) != len(names):  # PEP 503
        raise ValueError(f"a name is listed twice in {names!r}")
    return names


ImageRef = Annotated[str, AfterValidator(_image)]


def _cpu(cores: float) -> float:
    if cores <= 0:
        raise ValueError(f"must be a positive number of cores, got {cores!r}")
    return float(cores)


def _memory(memory: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]*[MG]", memory):
        raise ValueError(f"must look like '512M' or '4G', got {memory!r}")
    return memory


class _Resources(Strict):
    cpu: Annotated[StrictInt | StrictFloat, AfterValidator(_cpu)]
    memory: Annotated[str, AfterValidator(_memory)]


class _Service(Strict):
    image: ImageRef
    from_: str | None = Field(None, alias="from")


class _Environment(Strict):
    name: Annotated[str, AfterValidator(_name)]
    image: ImageRef
    from_: str | None = Field(None, alias="from")
    description: Text
    techniques: list[Annotated[str, AfterValidator(_technique)]]
    server_types: list[Literal["lab", "desktop"]] = Field(min_length=1)
    resources: _Resources
    software: Annotated[list[str], AfterValidator(_software)] = Field(default_factory=list)


class _Table(Strict):
    environments: list[_Environment] = Field(min_length=1)
    hub: _Service | None = None
    proxy: _Service | None = None


def _load(path: Path) -> dict[str, Image]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EnvironmentsError([f"{path}: cannot read the environments table: {e}"]) from e
    try:
        doc = Document(text, str(path))
        table = doc.validate(_Table)
    except YamlFileError as e:
        raise EnvironmentsError(e.problems) from None
    found: dict[str, Image] = {}
    problems = []

    def parent(entry: _Service | _Environment, loc: tuple[str | int, ...]) -> str | None:
        if entry.from_ is not None and entry.from_ not in found:
            problems.append(
                doc.problem(
                    (*loc, "from"),
                    f"{entry.from_!r} is not an environment listed earlier in the file"
                    f" (listed so far: {', '.join(found) or 'none'})",
                )
            )
        return entry.from_

    for i, entry in enumerate(table.environments):
        if entry.name in found:
            problems.append(doc.problem(("environments", i, "name"), "is listed twice"))
        found[entry.name] = Environment(
            name=entry.name,
            image=entry.image,
            parent=parent(entry, ("environments", i)),
            description=entry.description,
            techniques=tuple(entry.techniques),
            server_types=tuple(entry.server_types),
            cpu=float(entry.resources.cpu),
            memory=entry.resources.memory,
            software=tuple(entry.software),
        )
    for name in SERVICES:
        service = getattr(table, name)
        if service is not None:
            found[name] = Image(name, service.image, parent(service, (name,)))
    if problems:
        raise EnvironmentsError(problems)
    return found
