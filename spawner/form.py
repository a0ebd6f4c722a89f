"""The spawn form: server type, environment, the user's datasets by proposal, resources.

Environments are cards (a radio group): name, description, techniques, main software with
versions, and which chosen datasets make one the default, the same rule as
:func:`~spawner.options.pick_environment`, followed live in the page.

Rendered with Jinja2 autoescaping, so titles and other catalogue strings are always
escaped. The datasets listed are the catalogue's answer for this user; what is finally
mounted is decided again at spawn time, whatever the form sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment as Jinja
from jinja2 import FileSystemLoader, select_autoescape

from portal.catalogue import CatalogueError, Dataset, techniques
from spawner.environments import Environment
from spawner.options import ENVIRONMENT_DEFAULT, closest, pick_environment
from spawner.software import Software, software_for, software_note

_TEMPLATES = Jinja(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True, default_for_string=True),
)

SERVER_TYPE_LABELS = {"lab": "JupyterLab", "desktop": "Remote desktop (XFCE, silx view, PyMca)"}
#: Datasets the form lists, newest first. An instrument scientist may read 100,000: the form
#: lists these, says how many there are, and sends them to the datasets page to search.
FORM_LIMIT = 200


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def technique_name(pid: str) -> str:
    """A PaNET id as researchers read it; an id the portal does not know stays an id."""
    try:
        return techniques.get(pid).name
    except techniques.UnknownTechnique:
        return pid


def served_by(dataset: Dataset, environments: Mapping[str, Environment]) -> dict[str, str]:
    """Technique-specific environment -> the dataset's technique(s) it serves most closely
    (:func:`~spawner.options.closest`), by name.

    What makes an environment a dataset's default (:func:`pick_environment` counts exactly
    these), and the words of the card's "chosen because" line.
    """
    found: dict[str, list[str]] = {}
    for technique in dataset.techniques:
        for env in closest(technique, environments.values()):
            found.setdefault(env.name, []).append(technique_name(technique))
    return {name: " and ".join(names) for name, names in found.items()}


def environment_cards(
    environments: Mapping[str, Environment], software: Mapping[str, tuple[Software, ...]]
) -> list[dict[str, Any]]:
    """One card per environment: what it is for and what it runs (versions where known)."""
    return [
        {
            "name": env.name,
            "description": env.description,
            "techniques": [technique_name(t) for t in env.techniques],
            "types": " ".join(env.server_types),
            "software": [str(s) for s in software.get(env.name, ())],
        }
        for env in environments.values()
    ]


def form_context(
    datasets: list[Dataset],
    environments: Mapping[str, Environment],
    supported_types: tuple[str, ...],
    presets: Mapping[str, Mapping[str, Any]],
    selected: frozenset[str] = frozenset(),
    total: int | None = None,
    datasets_url: str = "",
    software: Mapping[str, tuple[Software, ...]] | None = None,
) -> dict[str, Any]:
    """The template's values: plain data, so the form can be tested without a hub.

    ``total``: how many datasets the user may read, when ``datasets`` lists only the newest
    (the form then says so, with a link to ``datasets_url`` to search the others).
    ``software``: each environment's main software with versions (:mod:`spawner.software`);
    without it the cards list none.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in sorted(datasets, key=lambda d: (d.proposal, d.title.lower())):
        groups.setdefault(d.proposal, []).append(
            {
                "pid": d.pid,
                "title": d.title,
                "instrument": d.instrument,
                "techniques": ", ".join(d.technique_names) or "technique not recorded",
                "size": human_size(d.size),
                "serves": served_by(d, environments),
                "search": " ".join((d.pid, d.title, d.proposal, d.instrument, *d.technique_names)),
                "checked": d.pid in selected,
            }
        )
    chosen = [d for d in datasets if d.pid in selected]
    return {
        "server_types": [
            {"name": t, "label": SERVER_TYPE_LABELS[t], "available": t in supported_types}
            for t in SERVER_TYPE_LABELS
        ],
        "environments": environment_cards(environments, software or {}),
        "initial_environment": pick_environment(chosen, environments, "lab").name,
        "groups": groups,
        "listed": len(datasets),
        "total": len(datasets) if total is None else total,
        "datasets_url": datasets_url,
        "presets": [
            {"name": ENVIRONMENT_DEFAULT, "label": "the environment's default"},
            *(
                {"name": n, "label": f"{n}: {p['cpu']:g} CPU, {p['memory']} memory"}
                for n, p in presets.items()
            ),
        ],
    }


def render_form(context: dict[str, Any]) -> str:
    return _TEMPLATES.get_template("spawn_form.html").render(**context)


async def options_form(spawner: Any) -> str:
    """``Spawner.options_form`` for the portal's spawners (JupyterHub awaits it)."""
    user = await spawner.user_for_catalogue()
    problem = ""
    try:
        page = await asyncio.to_thread(spawner.catalogue.search_page, user, limit=FORM_LIMIT)
        datasets, total = list(page.datasets), page.total
    except CatalogueError as e:  # the page still opens, and says why no dataset is listed
        datasets, total, problem = [], 0, f"Your datasets cannot be listed right now: {e}"
    context = form_context(
        datasets,
        spawner.environments,
        spawner.supported_server_types,
        spawner.resource_presets,
        total=total,
        datasets_url=f"{spawner.hub.base_url}datasets",
        software=await software_for(spawner),
    )
    # "New desktop" on the home page opens the form of a server named desktop-<n>.
    chosen = "desktop" if spawner.name.startswith("desktop-") else "lab"
    return render_form(
        {
            **context,
            "problem": problem,
            "chosen_type": chosen,
            "software_note": software_note(spawner),
            **spawner.backend_form_context(),
        }
    )
