"""The main software of each environment, with the versions a server really gets.

The environments table names each environment's main Python distributions (``software``);
the versions come from where the server runs, never from the table, so a card on the spawn
form cannot promise a version the server lacks:

* Docker: the image's label :data:`LABEL`, which ``panosc-portal images build`` writes from
  the built image itself (:mod:`portal.images`). Read from the local engine, cached, with a
  timeout: a missing image, a missing label or a slow engine shows the names without versions.
* local (the demo): servers run in the hub's own Python, so its installed distributions
  (``importlib.metadata``); a name not installed there is left out, as the server lacks it.
* Kubernetes: the hub has no engine to ask, and the nodes' images may differ from any it
  could see, so the card shows the names without versions.

Imports nothing of the spawners: :func:`software_for` tells the backends apart by the
JupyterHub spawner class they build on.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dockerspawner import DockerSpawner
from jupyterhub.spawner import LocalProcessSpawner

from spawner.environments import Environment

#: The image label holding the versions: ``"pyFAI 2026.9.0, fabio 2026.6.0"``, readable in
#: ``docker image inspect`` as it is.
LABEL = "org.panosc.portal.software"
#: How long the hub waits for the Docker engine before showing the cards without versions.
DOCKER_TIMEOUT = 2.0
#: How long an image's labels are reused: a rebuilt image shows its versions within a minute.
CACHE_SECONDS = 60.0

#: A version as PEP 440 writes it (and a little more); anything else in a label is ignored.
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]{0,40}")


@dataclass(frozen=True)
class Software:
    """One distribution on a card; ``version`` is ``None`` when it could not be read."""

    name: str
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


def label_value(versions: Mapping[str, str]) -> str:
    """The :data:`LABEL` value for ``{name: version}``, in the table's order."""
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _key(name: str) -> str:
    """PEP 503's normalised name: ``PyMca5`` and ``pymca5``, ``scikit_image`` and
    ``scikit-image`` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def from_label(value: str | None, names: Iterable[str]) -> tuple[Software, ...]:
    """The table's ``names`` with the versions a label gives them.

    The label is the image's, so anything in it is untrusted: only the names the table
    lists are shown (in its order, spelled as it spells them), and only with a version that
    looks like one. A name the label lacks is shown without a version.
    """
    found: dict[str, str] = {}
    for item in (value or "").split(","):
        name, _, version = item.strip().partition(" ")
        if _VERSION.fullmatch(version):
            found.setdefault(_key(name), version)
    return tuple(Software(n, found.get(_key(n))) for n in names)


def installed(names: Iterable[str]) -> tuple[Software, ...]:
    """``names`` as installed in this Python (the local backend's servers run in it)."""
    found = []
    for name in names:
        try:
            found.append(Software(name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(found)


class LabelCache:
    """Images' labels read from a Docker engine, kept for :data:`CACHE_SECONDS`.

    Every spawn form would otherwise ask the engine about every image; a failure (no such
    image, an engine that does not answer in time) is kept too, so a slow engine costs one
    form the timeout, not every form.
    """

    def __init__(self, seconds: float = CACHE_SECONDS) -> None:
        self.seconds = seconds
        self._labels: dict[str, tuple[float, dict[str, str]]] = {}

    async def labels(
        self, inspect: Callable[[str], dict], tag: str, timeout: float
    ) -> dict[str, str]:
        """``tag``'s labels, empty when the engine does not know the image or is too slow.

        ``inspect`` is ``docker.APIClient.inspect_image`` or a function that first makes the
        client: making one asks the engine for its API version, which may hang as well.
        """
        cached = self._labels.get(tag)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            info = await asyncio.wait_for(asyncio.to_thread(inspect, tag), timeout)
            labels = dict((info.get("Config") or {}).get("Labels") or {})
        except Exception:  # any engine trouble (gone, refusing, too slow): no versions
            labels = {}
        self._labels[tag] = (time.monotonic() + self.seconds, labels)
        return labels


_DOCKER_LABELS = LabelCache()


async def docker_software(
    inspect: Callable[[str], dict],
    environments: Mapping[str, Environment],
    timeout: float = DOCKER_TIMEOUT,
    cache: LabelCache = _DOCKER_LABELS,
) -> dict[str, tuple[Software, ...]]:
    """Each environment's software with the versions of its image's label, asked at once."""
    envs = list(environments.values())
    labels = await asyncio.gather(*(cache.labels(inspect, e.image, timeout) for e in envs))
    return {
        e.name: from_label(found.get(LABEL), e.software)
        for e, found in zip(envs, labels, strict=True)
    }


def software_note(spawner: Any) -> str:
    """What the cards' software lists mean on ``spawner``'s backend, when it needs saying.

    On the local backend every environment is the hub's own Python, so a card lists only
    what of its software is installed there: the form says why pyFAI may be missing.
    """
    if isinstance(spawner, LocalProcessSpawner):
        return (
            "On this portal every environment runs the portal's own Python: each card lists"
            " the software of it installed here."
        )
    return ""


async def software_for(spawner: Any) -> dict[str, tuple[Software, ...]]:
    """The cards' software for ``spawner``'s backend (see the module docstring)."""
    environments: Mapping[str, Environment] = spawner.environments
    if isinstance(spawner, DockerSpawner):
        return await docker_software(lambda tag: spawner.client.inspect_image(tag), environments)
    if isinstance(spawner, LocalProcessSpawner):
        return {e.name: installed(e.software) for e in environments.values()}
    return {e.name: tuple(Software(n) for n in e.software) for e in environments.values()}
