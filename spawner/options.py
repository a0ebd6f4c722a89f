"""What a user may ask of a spawn: server type, environment, datasets, resources.

Options arrive from the spawn form, from ``/hub/spawn?opt-...`` links and from the REST
API; all three go through :func:`parse_options`, which accepts only known keys and known
values and says which one it refused. Dataset pids are only *requests* here: the catalogue
decides at spawn time (:mod:`spawner.common`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jupyterhub.spawner import SpawnException

from portal.catalogue import Dataset, techniques
from spawner.environments import SERVER_TYPES, Environment

OPTION_KEYS = ("type", "environment", "datasets", "resources")
ENVIRONMENT_DEFAULT = "default"  # the resource preset that means "the environment's own hint"


class SpawnRefused(SpawnException):
    """A spawn the user asked for is not allowed (JupyterHub's policy-failure exception).

    The REST API answers with its status and message instead of a 500, the spawn page
    shows the message, and the hub logs it without a traceback.
    """

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message, reason="refused", status_code=status)


@dataclass(frozen=True)
class Resources:
    """CPU cores and memory (``"4G"``) for one server."""

    cpu: float
    memory: str


@dataclass(frozen=True)
class ServerOptions:
    """A checked request. ``None`` means "not chosen": the portal picks."""

    server_type: str = "lab"
    environment: str | None = None
    datasets: tuple[str, ...] | None = None
    resources: str = ENVIRONMENT_DEFAULT

    def as_user_options(self) -> dict[str, Any]:
        """The JSON form JupyterHub stores, shows in the API and passes back on restart."""
        options: dict[str, Any] = {"type": self.server_type, "resources": self.resources}
        if self.environment:
            options["environment"] = self.environment
        if self.datasets is not None:
            options["datasets"] = list(self.datasets)
        return options


def single_option(raw: Mapping[str, Any], key: str) -> str | None:
    """One string option; form and query data come as one-element lists."""
    value = raw.get(key)
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else value
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise SpawnRefused(f"server option {key!r} must be a single string, got {value!r}", 400)
    return value


def parse_options(
    raw: Mapping[str, Any],
    environments: Mapping[str, Environment],
    presets: Iterable[str],
) -> ServerOptions:
    """Check ``raw`` user options against the allow-lists; refuse naming what is wrong."""
    unknown = sorted(set(raw) - set(OPTION_KEYS))
    if unknown:
        raise SpawnRefused(
            f"unknown server option(s) {', '.join(unknown)}; allowed: {', '.join(OPTION_KEYS)}",
            400,
        )
    server_type = single_option(raw, "type") or "lab"
    if server_type not in SERVER_TYPES:
        raise SpawnRefused(
            f"unknown server type {server_type!r}; choose one of {', '.join(SERVER_TYPES)}", 400
        )
    environment = single_option(raw, "environment")
    if environment is not None:
        if environment not in environments:
            raise SpawnRefused(
                f"unknown environment {environment!r}; available: {', '.join(environments)}",
                400,
            )
        if server_type not in environments[environment].server_types:
            raise SpawnRefused(
                f"environment {environment!r} offers no {server_type} server"
                f" (it offers {', '.join(environments[environment].server_types)})",
                400,
            )
    resources = single_option(raw, "resources") or ENVIRONMENT_DEFAULT
    allowed = [ENVIRONMENT_DEFAULT, *presets]
    if resources not in allowed:
        raise SpawnRefused(
            f"unknown resource preset {resources!r}; choose one of {', '.join(allowed)}", 400
        )
    datasets = raw.get("datasets")
    if datasets is not None:
        if isinstance(datasets, str):
            datasets = [datasets]
        if not isinstance(datasets, list) or not all(isinstance(p, str) and p for p in datasets):
            raise SpawnRefused("server option 'datasets' must be a list of dataset pids", 400)
        datasets = tuple(dict.fromkeys(datasets))
    return ServerOptions(server_type, environment, datasets, resources)


def pick_environment(
    datasets: Iterable[Dataset], environments: Mapping[str, Environment], server_type: str
) -> Environment:
    """The environment made for most of these datasets' techniques, offering ``server_type``.

    Technique-specific environments win over general ones, and of those the one made for
    the closest technique (:func:`closest`); ties go to the table's order; with no dataset
    (or no match) the first general environment is used.
    """
    offered = [e for e in environments.values() if server_type in e.server_types]
    if not offered:
        raise SpawnRefused(f"no environment offers a {server_type} server", 400)
    votes: Counter[str] = Counter()
    for dataset in datasets:
        chosen = {env.name for t in dataset.techniques for env in closest(t, offered)}
        votes.update(chosen)
    if votes:
        best = max(votes.values())
        return next(e for e in offered if votes[e.name] == best)
    general = [e for e in offered if not e.techniques]
    return (general or offered)[0]


def closest(technique: str, environments: Iterable[Environment]) -> list[Environment]:
    """The technique-specific environments serving ``technique`` through the most specific
    PaNET term: an EXAFS dataset goes to the environment made for x-ray absorption
    spectroscopy, not to one made for all of x-ray spectroscopy, the term above it.

    An environment is left out when each term by which it serves the technique lies above
    one by which another serves it.
    """
    serving = [e for e in environments if e.techniques and e.serves(technique)]
    if len(serving) < 2:
        return serving
    lineage = techniques.ancestors(technique)
    terms = {e.name: set(e.techniques) & lineage for e in serving}

    def above(term: str, other: str) -> bool:
        return term != other and term in techniques.ancestors(other)

    return [
        env
        for env in serving
        if not any(
            all(
                any(above(mine, theirs) for theirs in terms[rival.name]) for mine in terms[env.name]
            )
            for rival in serving
            if rival is not env
        )
    ]
