"""Experimental techniques, as PaNET ids, and the hierarchy that lets a search find them.

Datasets are tagged with PaNET ids (the Photon and Neutron Experimental Techniques ontology)
rather than free text, so that the portal, the facility catalogues and the PaNOSC federated
search all mean the same thing by "SAXS". PaNET is a hierarchy: a search for "x-ray
scattering" must also find datasets tagged "small angle x-ray scattering", hence
:func:`descendants`.

The ontology itself is large and is an OWL file; the portal ships the small subset it uses in
``panet.yaml`` (next to this module), together with the table that turns a NeXus application
definition into technique ids (:func:`for_definition`). Both are read once and cached.
Imports nothing from JupyterHub.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

#: Where ``panet.yaml`` lives: shipped as package data next to this module.
DATA_FILE = Path(__file__).with_name("panet.yaml")

#: Namespace of PaNET term IRIs: ``IRI_PREFIX + pid`` is the IRI of a technique.
IRI_PREFIX = "http://purl.org/pan-science/PaNET/"

_PID = re.compile(r"PaNET\d{5}")
_IRI = re.compile(r"https?://purl\.org/pan-science/PaNET/(PaNET\d{5})", re.IGNORECASE)


class UnknownTechnique(LookupError):
    """A technique the portal does not know; the message says what was asked and what would
    work. Its own error, so that no other lookup failing reads as "unknown technique"."""


@dataclass(frozen=True)
class Technique:
    """One PaNET technique: its id, its label and its parents within the portal's subset.

    ``parents`` are the nearest ancestors that the subset contains (see ``panet.yaml``), so
    walking them up gives the same ancestors as the full ontology restricted to the subset.
    ``alt_names`` are PaNET's alternative labels ("SAXS"); they only help :func:`get`.
    """

    pid: str
    name: str
    parents: tuple[str, ...]
    alt_names: tuple[str, ...] = ()

    @property
    def iri(self) -> str:
        """The technique's persistent IRI, as other catalogues and the ontology spell it."""
        return IRI_PREFIX + self.pid


@dataclass(frozen=True)
class _Catalogue:
    """Everything read from ``panet.yaml``, with the indexes the lookups need."""

    techniques: Mapping[str, Technique]
    by_name: Mapping[str, str]  # normalised name or alt name -> pid
    children: Mapping[str, tuple[str, ...]]
    definitions: Mapping[str, Mapping[str, tuple[str, ...]]]  # lower-case NXdef -> probe -> pids


def _norm_name(name: str) -> str:
    """Case- and spacing-insensitive form of a name, so "Small-Angle  X-ray" style typing works."""
    return " ".join(name.casefold().split())


def _norm_probe(probe: str) -> str:
    """``X-ray``, ``xray`` and ``x-rays`` all mean the same NXsource/probe."""
    key = re.sub(r"[^a-z]", "", probe.casefold())
    return key[:-1] if key.endswith("s") else key


def _as_pids(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValueError(f"{where}: expected a list of PaNET ids, got {value!r}")
    return tuple(value)


def load(path: Path = DATA_FILE) -> _Catalogue:
    """Read and check a techniques file; raise ``ValueError`` saying what is wrong with it.

    The checks (ids well formed and unique, every parent present, no cycles, names unique,
    definitions pointing at known ids) run at load time because a broken hierarchy would not
    fail loudly later: it would just make searches miss datasets.
    """
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    techniques: dict[str, Technique] = {}
    by_name: dict[str, str] = {}
    for i, entry in enumerate(doc.get("techniques") or []):
        where = f"{path}: techniques[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with id, name and parents")
        pid = str(entry.get("id", ""))
        if not _PID.fullmatch(pid):
            raise ValueError(f"{where}: id {pid!r} is not a PaNET id like 'PaNET01188'")
        if pid in techniques:
            raise ValueError(f"{where}: {pid} is listed twice")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: {pid} has no name")
        parents = _as_pids(entry.get("parents", []), f"{where} ({pid}) parents")
        alt_names = tuple(str(a) for a in entry.get("alt_names") or [])
        techniques[pid] = Technique(pid, name.strip(), parents, alt_names)
        for label in (name, *alt_names):
            key = _norm_name(label)
            if by_name.get(key, pid) != pid:
                raise ValueError(f"{where}: name {label!r} of {pid} is also {by_name[key]}'s")
            by_name[key] = pid

    children: dict[str, list[str]] = {pid: [] for pid in techniques}
    for t in techniques.values():
        for parent in t.parents:
            if parent not in techniques:
                raise ValueError(f"{path}: parent {parent} of {t.pid} is not in the file")
            children[parent].append(t.pid)
    _check_acyclic(techniques, path)

    definitions: dict[str, dict[str, tuple[str, ...]]] = {}
    for nxdef, value in (doc.get("definitions") or {}).items():
        where = f"{path}: definitions.{nxdef}"
        by_probe = value if isinstance(value, dict) else {"default": value}
        table = {
            _norm_probe(str(p)): _as_pids(pids, f"{where}.{p}") for p, pids in by_probe.items()
        }
        table.setdefault("default", ())
        for pid in (p for pids in table.values() for p in pids):
            if pid not in techniques:
                raise ValueError(f"{where}: {pid} is not in the techniques list")
        definitions[str(nxdef).casefold()] = table

    return _Catalogue(
        techniques=techniques,
        by_name=by_name,
        children={pid: tuple(kids) for pid, kids in children.items()},
        definitions=definitions,
    )


def _check_acyclic(techniques: Mapping[str, Technique], path: Path) -> None:
    """Depth-first search for a cycle; a cycle would make a technique its own descendant."""
    done: set[str] = set()

    def visit(pid: str, trail: list[str]) -> None:
        if pid in trail:
            cycle = " -> ".join([*trail[trail.index(pid) :], pid])
            raise ValueError(f"{path}: the parents form a cycle: {cycle}")
        if pid in done:
            return
        for parent in techniques[pid].parents:
            visit(parent, [*trail, pid])
        done.add(pid)

    for pid in techniques:
        visit(pid, [])


@cache
def _catalogue() -> _Catalogue:
    return load()


def all_techniques() -> dict[str, Technique]:
    """Every technique the portal knows, by PaNET id (a copy: changing it changes nothing)."""
    return dict(_catalogue().techniques)


def get(pid_or_name: str) -> Technique:
    """The technique for a PaNET id (or ``PaNET:`` CURIE), its IRI or a name (any case).

    Accepting all three lets URLs, catalogue records and people's typing share one entry
    point. Raises :class:`UnknownTechnique` naming what was asked for, with a hint of what
    would work.
    """
    cat = _catalogue()
    text = pid_or_name.strip()
    iri = _IRI.fullmatch(text)
    pid = iri.group(1) if iri else re.sub(r"(?i)^panet:", "", text)  # also the CURIE PaNET:PaNET…
    if re.fullmatch(r"(?i)panet\d{5}", pid):
        pid = "PaNET" + pid[5:]
        if pid in cat.techniques:
            return cat.techniques[pid]
        raise UnknownTechnique(
            f"{pid_or_name!r} is not among the PaNET techniques the portal knows;"
            f" to use it, add it to {DATA_FILE.name}"
        )
    found = cat.by_name.get(_norm_name(text))
    if found is not None:
        return cat.techniques[found]
    names = sorted({t.name for t in cat.techniques.values()})
    close = difflib.get_close_matches(text.casefold(), [n.casefold() for n in names], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownTechnique(
        f"unknown technique {pid_or_name!r}: give a PaNET id (e.g. 'PaNET01188'), its IRI"
        f" ({IRI_PREFIX}PaNET01188) or a name such as 'small angle x-ray scattering'{hint}"
    )


def descendants(pid: str) -> set[str]:
    """The technique itself and every technique below it: what a search for it must match.

    ``pid`` may also be an IRI or a name (see :func:`get`); unknown techniques raise
    :class:`UnknownTechnique`.
    """
    cat = _catalogue()
    start = get(pid).pid
    found = {start}
    stack = [start]
    while stack:
        for child in cat.children[stack.pop()]:
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def ancestors(pid: str) -> set[str]:
    """The technique itself and every technique above it.

    Includes the technique, like :func:`descendants`, so that ``a in ancestors(b)`` exactly
    when ``b in descendants(a)``: a dataset tagged ``b`` is found by a search for ``a``.
    """
    cat = _catalogue()
    start = get(pid).pid
    found = {start}
    stack = [start]
    while stack:
        for parent in cat.techniques[stack.pop()].parents:
            if parent not in found:
                found.add(parent)
                stack.append(parent)
    return found


def for_definition(definition: str | None, probe: str | None = None) -> tuple[str, ...]:
    """PaNET ids for a NeXus application definition (``NXentry/definition``), e.g. NXsas.

    The application definition is the one technique statement almost every NeXus file makes,
    so indexing uses it to tag datasets. Some definitions (NXsas, NXmonopd, NXtomo, NXsqom)
    serve both x-rays and neutrons; for those the result is the technique common to both
    ("small angle scattering") unless ``probe`` (``NXsource/probe``: "x-ray", "neutron", ...)
    says which one ("small angle x-ray scattering"). Unknown or missing definitions give
    ``()``: an untagged dataset is better than a wrongly tagged one. Case-insensitive.
    """
    if not definition:
        return ()
    table = _catalogue().definitions.get(definition.strip().casefold())
    if table is None:
        return ()
    if probe:
        specific = table.get(_norm_probe(probe))
        if specific:
            return specific
    return table["default"]
