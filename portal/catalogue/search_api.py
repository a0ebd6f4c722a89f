"""The PaNOSC Search API (github.com/panosc-eu/search-api) as the portal's catalogue.

``url`` is the API root, ``/api`` included (the reference implementation's ``restApiRoot``),
e.g. ``https://search.example-facility.eu/api``. What the portal asks, and why, as the
reference implementation (LoopBack 3) answers:

- ``GET /datasets?filter=`` with ``include`` ``techniques``, ``instrument`` (and ``files``
  when the location needs them), paged with the filter's top-level ``limit``/``skip`` (it has
  no page cap; a short page is the last). The Dataset model has **no** ``documents``
  relation (``common/models/dataset.json``): asking for one is an HTTP 500.
- A dataset's proposal comes from the other side: the ``Document`` of ``type`` "proposal"
  whose ``datasets`` relation holds it: ``GET /documents?filter={"where":{"type":
  "proposal"},"include":[{"relation":"datasets","scope":{"fields":["pid"]}}]}``, read once
  per listing (and cached like any answer). ``get`` asks that query with a scope on its pid
  (as ``{"and":[{"pid":...}]}``: LoopBack overwrites a plain ``pid`` key in the scope of a
  through relation, ``loopback-datasource-juggler/lib/include.js``), which returns the
  proposal with the dataset and its relations in one request; a dataset no proposal
  holds (public data in the spec's sense) takes a second one, ``GET /datasets/{pid}``.
- The proposal's ``releaseDate`` is the public date of a dataset marked ``isPublic``;
  ``isPublic: false`` data is readable by the proposal's members only (the ``proposals``
  claim). The reference serves every record to everyone (it has no ACLs and ignores
  tokens), so the portal's own check is the only one, and no token is sent by default.
- Filters: ``text`` goes to the server (its ``text`` operator, a case-insensitive
  substring of the title where ``%`` and ``_`` are wildcards) and is checked again here as
  a plain substring. Technique (PaNET, descendants included), proposal and instrument are
  applied here: the reference drops non-matching datasets *after* ``limit``/``skip``
  (``common/mixins/sanitize.js``), so a server-side relation filter gives short or empty
  pages while more matches follow.

Other implementations: SciCat's and ILL's Search APIs follow the same spec and model
(Dataset without ``documents``, Document with ``datasets``), so the same queries apply; one
whose datasets carry their ``documents`` inline works too, as an included ``documents`` in a
dataset record is read when present. Where an implementation needs a token,
``token_header`` sends the user's. The storage location is built from
``location_template``: ``{files_path}`` (the folder common to the files' paths, the default),
``{proposal}``, ``{instrument}``, ``{pid}`` and ``{dataset}`` (the pid after its last "/"). A
placeholder with no value gives no location (the mount plan then refuses the dataset), so a
template never widens to a whole storage root. Imports nothing from JupyterHub.
"""

from __future__ import annotations

import posixpath
from string import Formatter
from typing import Any
from urllib.parse import quote

from traitlets import TraitError, Unicode, validate

from portal.catalogue import techniques
from portal.catalogue.base import DatasetNotFound
from portal.catalogue.http import (
    PUBLISHED,
    HttpCatalogue,
    NotFound,
    filter_param,
    parse_time,
    technique_id,
)
from portal.catalogue.model import CatalogueUser, Dataset

DATASETS = "/datasets"
DOCUMENTS = "/documents"
PLACEHOLDERS = ("files_path", "proposal", "instrument", "pid", "dataset")
PROPOSALS = {"where": {"type": "proposal"}}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name is not None}


def _files_path(files: list[Any]) -> str:
    """The folder common to the files' ``path`` values, or "" if none has one."""
    paths = [f["path"] for f in files if isinstance(f, dict) and isinstance(f.get("path"), str)]
    try:
        return posixpath.commonpath(paths) if paths else ""
    except ValueError:  # absolute and relative paths mixed: no common folder
        return ""


class SearchApiCatalogue(HttpCatalogue):
    """Datasets from a facility's PaNOSC Search API, with their proposals."""

    location_template = Unicode(
        "{files_path}",
        config=True,
        help="Storage location of a dataset, from {files_path} (folder common to its files),"
        " {proposal}, {instrument}, {pid} and {dataset} (the pid after its last '/'),"
        " e.g. /data/visitor/{proposal}/{instrument}/{dataset}.",
    )
    token_header = Unicode(
        "",
        config=True,
        help="Header that carries the user's access token, for an implementation that needs"
        " one (the reference has no authentication); empty sends no token.",
    )

    @validate("location_template")
    def _known_placeholders(self, proposed: dict[str, Any]) -> str:
        template = proposed["value"]
        try:
            unknown = _fields(template) - set(PLACEHOLDERS)
        except ValueError as e:
            raise TraitError(f"location_template {template!r}: {e}") from None
        if unknown:
            raise TraitError(
                f"location_template {template!r}: unknown placeholder(s)"
                f" {', '.join(sorted(unknown))}; use {', '.join(PLACEHOLDERS)}"
            )
        return template

    def auth_headers(self, user: CatalogueUser) -> dict[str, str]:
        if self.token_header and user.access_token:
            return {self.token_header: user.access_token}
        return {}

    def _include(self) -> list[dict[str, str]]:
        relations = ["techniques", "instrument"]
        if "files_path" in _fields(self.location_template):
            relations.append("files")
        return [{"relation": r} for r in relations]

    # -- proposals --------------------------------------------------------------------

    def proposals(self, user: CatalogueUser) -> dict[str, dict[str, Any]]:
        """Dataset pid -> its proposal document, from every proposal the server lists."""
        scope = {"relation": "datasets", "scope": {"fields": ["pid"]}}

        def page(skip: int, limit: int) -> dict[str, Any]:
            return {**PROPOSALS, "include": [scope], "limit": limit, "skip": skip}

        found: dict[str, dict[str, Any]] = {}
        for document in self.records(user, DOCUMENTS, page):
            if isinstance(document, dict):
                for dataset in document.get("datasets") or []:
                    if isinstance(dataset, dict) and dataset.get("pid"):
                        found.setdefault(str(dataset["pid"]), document)
        return found

    # -- records ----------------------------------------------------------------------

    def _location(self, pid: str, proposal: str, instrument: str, record: dict) -> str:
        values = {
            "files_path": _files_path(record.get("files") or []),
            "proposal": proposal,
            "instrument": instrument,
            "pid": pid,
            "dataset": pid.rsplit("/", 1)[-1],
        }
        if any(not values[name] for name in _fields(self.location_template)):
            return ""
        return self.location_template.format(**values)

    def to_dataset(self, record: dict[str, Any]) -> Dataset:
        """A dataset record; its proposal document is ``record["proposal"]`` (set by the
        portal from the documents' side) or one of its inline ``documents``."""
        pid = str(record["pid"])
        inline = [d for d in record.get("documents") or [] if isinstance(d, dict)]
        proposal_doc = record.get("proposal") or next(
            (d for d in inline if d.get("type") == "proposal"), {}
        )
        proposal = str(proposal_doc.get("pid") or "")
        inst = record.get("instrument")
        instrument = str(inst.get("name") or "") if isinstance(inst, dict) else ""
        release = parse_time(proposal_doc.get("releaseDate"))
        files = record.get("files")
        return Dataset(
            pid=pid,
            title=str(record.get("title") or pid),
            proposal=proposal,
            instrument=instrument,
            location=self._location(pid, proposal, instrument, record),
            techniques=tuple(
                technique_id(t.get("panetId"), t.get("pid"), t.get("name"))
                for t in record.get("techniques") or []
                if isinstance(t, dict)
            ),
            start_time=parse_time(record.get("creationDate")),
            public_date=(release.date() if release else PUBLISHED)
            if record.get("isPublic") is True
            else None,
            size=int(record.get("size") or 0),
            file_count=len(files) if isinstance(files, list) else 0,
            doi=str(record.get("doi") or ""),
        )

    def _listing(self, user: CatalogueUser, where: dict[str, Any]) -> list[Dataset]:
        proposals = self.proposals(user)
        include = self._include()

        def page(skip: int, limit: int) -> dict[str, Any]:
            query: dict[str, Any] = {"include": include, "limit": limit, "skip": skip}
            if where:
                query["where"] = where
            return query

        records = (
            {**r, "proposal": proposals.get(str(r.get("pid")))} if isinstance(r, dict) else r
            for r in self.records(user, DATASETS, page)
        )
        return self.readable(user, records)

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self._listing(user, {})

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        scope = {"where": {"and": [{"pid": pid}]}, "include": self._include()}
        query = {**PROPOSALS, "include": [{"relation": "datasets", "scope": scope}]}
        records = []
        for document in self.get_json(user, DOCUMENTS, filter_param(query)) or []:
            for dataset in document.get("datasets") or [] if isinstance(document, dict) else []:
                if isinstance(dataset, dict) and dataset.get("pid") == pid:
                    records.append({**dataset, "proposal": document})
        if not records:  # in no proposal: ask for the dataset itself
            path = f"{DATASETS}/{quote(pid, safe='')}"
            try:
                record = self.get_json(user, path, filter_param({"include": self._include()}))
            except NotFound:
                raise DatasetNotFound(pid) from None
            records = [record] if isinstance(record, dict) and record.get("pid") == pid else []
        found = self.readable(user, records[:1])
        if not found:
            raise DatasetNotFound(pid)
        return found[0]

    def search(
        self,
        user: CatalogueUser,
        *,
        text: str = "",
        technique: str = "",
        proposal: str = "",
        instrument: str = "",
        limit: int = 50,
        offset: int = 0,
    ) -> list[Dataset]:
        wanted = techniques.descendants(techniques.get(technique).pid) if technique else set()
        found = [
            d
            for d in self._listing(user, {"text": text} if text else {})
            if (not text or text.casefold() in d.title.casefold())
            and (not wanted or wanted.intersection(d.techniques))
            and (not proposal or d.proposal == proposal)
            and (not instrument or d.instrument.casefold() == instrument.casefold())
        ]
        return found[offset : offset + limit]


__all__ = ["PLACEHOLDERS", "SearchApiCatalogue"]
