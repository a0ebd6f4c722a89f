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
from typing import Any

import yaml

from portal import __version__
from portal.catalogue import techniques

#: The table as shipped: a symlink to images/environments.yaml in a source tree, a copy in a wheel.
DATA_FILE = Path(__file__).with_name("environments.yaml")

SERVER_TYPES = ("lab", "desktop")

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_IMAGE = re.compile(r"[a-z0-9][a-z0-9._/-]*:[A-Za-z0-9_.{}-]+")
_MEMORY = re.compile(r"[1-9][0-9]*[MG]")
_ENV_KEYS = frozenset(
    {"name", "image", "from", "description", "techniques", "server_types", "resources", "software"}
)
#: Keys an environment may leave out.
_OPTIONAL_ENV_KEYS = frozenset({"from", "software"})
#: A Python distribution's name as PyPI spells it (PEP 508).
_DISTRIBUTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,60}[A-Za-z0-9])?")
#: The portal's own images, each a top-level key of the table: the Helm chart runs them, users
#: are never offered them.
SERVICES = ("hub", "proxy")
_SERVICE_KEYS = frozenset({"image", "from"})


class EnvironmentsError(ValueError):
    """The table is wrong; the message names the file, the entry and the field."""


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
        except KeyError:
            return False


def load_environments(path: Path | None = None) -> dict[str, Environment]:
    """The environments users can start, by name, in the file's order."""
    return {name: i for name, i in _load(path or DATA_FILE).items() if isinstance(i, Environment)}


def load_images(path: Path | None = None) -> dict[str, Image]:
    """Every image to build (the environments, the hub and the proxy), by name, parents first."""
    return _load(path or DATA_FILE)


def _load(path: Path) -> dict[str, Image]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise EnvironmentsError(f"{path}: cannot read the environments table: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("environments"), list):
        raise EnvironmentsError(f"{path}: expected a mapping with an 'environments' list")
    unknown = sorted(set(doc) - {"environments", *SERVICES})
    if unknown:
        raise EnvironmentsError(f"{path}: unknown top-level key(s) {', '.join(unknown)}")

    found: dict[str, Image] = {}
    for i, entry in enumerate(doc["environments"]):
        name = entry.get("name") if isinstance(entry, dict) else None
        env = _environment(entry, f"{path}: environments[{i}] ({name or 'no name'})", found)
        found[env.name] = env
    if not found:
        raise EnvironmentsError(f"{path}: the environments list is empty")
    for name in SERVICES:
        if name in doc:
            found[name] = _service(name, doc[name], f"{path}: {name}", found)
    return found


def _service(name: str, entry: Any, where: str, earlier: dict[str, Image]) -> Image:
    _check_keys(entry, _SERVICE_KEYS, {"image"}, where)
    return Image(name, _image(entry["image"], where), _parent(entry.get("from"), where, earlier))


def _check_keys(entry: Any, allowed: frozenset[str], required: set[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise EnvironmentsError(f"{where}: expected a mapping with {', '.join(sorted(allowed))}")
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise EnvironmentsError(
            f"{where}: unknown key(s) {', '.join(unknown)};"
            f" valid keys: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(entry))
    if missing:
        raise EnvironmentsError(f"{where}: missing {', '.join(missing)}")


def _environment(entry: Any, where: str, earlier: dict[str, Image]) -> Environment:
    _check_keys(entry, _ENV_KEYS, set(_ENV_KEYS - _OPTIONAL_ENV_KEYS), where)
    name = entry["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in SERVICES:
        raise EnvironmentsError(
            f"{where}: name must be lower-case letters, digits and '-'"
            f" (not {' or '.join(map(repr, SERVICES))}), got {name!r}"
        )
    if name in earlier:
        raise EnvironmentsError(f"{where}: name {name!r} is listed twice")
    description = entry["description"]
    if not isinstance(description, str) or not description.strip():
        raise EnvironmentsError(f"{where}: description must be a non-empty string")
    server_types = _str_list(entry["server_types"], f"{where}: server_types")
    if not server_types or set(server_types) - set(SERVER_TYPES):
        raise EnvironmentsError(
            f"{where}: server_types must be a non-empty list of {', '.join(SERVER_TYPES)};"
            f" got {entry['server_types']!r}"
        )
    cpu, memory = _resources(entry["resources"], f"{where}: resources")
    return Environment(
        name=name,
        image=_image(entry["image"], where),
        parent=_parent(entry.get("from"), where, earlier),
        description=description.strip(),
        techniques=tuple(
            _technique(t, f"{where}: techniques")
            for t in _str_list(entry["techniques"], f"{where}: techniques")
        ),
        server_types=server_types,
        cpu=cpu,
        memory=memory,
        software=_software(entry.get("software", []), f"{where}: software"),
    )


def _software(value: Any, where: str) -> tuple[str, ...]:
    names = _str_list(value, where)
    for name in names:
        if not _DISTRIBUTION.fullmatch(name):
            raise EnvironmentsError(f"{where}: {name!r} is not a Python distribution name")
    if len({re.sub(r"[-_.]+", "-", n).lower() for n in names}) != len(names):  # PEP 503
        raise EnvironmentsError(f"{where}: a name is listed twice in {list(names)!r}")
    return names


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EnvironmentsError(f"{where}: expected a list of strings, got {value!r}")
    return tuple(value)


def _image(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IMAGE.fullmatch(value):
        raise EnvironmentsError(
            f"{where}: image must look like 'panosc/base:{{version}}', got {value!r}"
        )
    return value.replace("{version}", __version__)


def _parent(value: Any, where: str, earlier: dict[str, Image]) -> str | None:
    if value is None:
        return None
    if value not in earlier:
        raise EnvironmentsError(
            f"{where}: from: {value!r} is not an environment listed earlier in the file"
            f" (listed so far: {', '.join(earlier) or 'none'})"
        )
    return value


def _technique(pid: str, where: str) -> str:
    try:
        known = techniques.get(pid).pid
    except KeyError as e:
        raise EnvironmentsError(f"{where}: {e.args[0]}") from e
    if known != pid:
        raise EnvironmentsError(f"{where}: write the PaNET id {known!r}, not {pid!r}")
    return pid


def _resources(value: Any, where: str) -> tuple[float, str]:
    _check_keys(value, frozenset({"cpu", "memory"}), {"cpu", "memory"}, where)
    cpu, memory = value["cpu"], value["memory"]
    if isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu <= 0:
        raise EnvironmentsError(f"{where}: cpu must be a positive number of cores, got {cpu!r}")
    if not isinstance(memory, str) or not _MEMORY.fullmatch(memory):
        raise EnvironmentsError(f"{where}: memory must look like '512M' or '4G', got {memory!r}")
    return float(cpu), memory
