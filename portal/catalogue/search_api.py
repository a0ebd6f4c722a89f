"""The PaNOSC Search API (github.com/panosc-eu/search-api) as the portal's catalogue.

Calls, as the spec's ``doc/api-calls.md`` defines them: ``GET /datasets?filter=...`` and
``GET /datasets/{pid}?filter=...``, the filter being LoopBack JSON (``where``, ``include``,
``limit``, ``skip``; ``doc/query.md``). Each dataset is asked with its ``documents``,
``techniques`` and ``instrument`` (and ``files`` when the location needs them), and maps as:

- proposal: the ``pid`` of its document of ``type`` "proposal" (the spec's stable id);
- public: the dataset's ``isPublic``; its proposal's ``releaseDate``, when given, as the
  public date (a future one keeps it embargoed), else "public since an unknown day";
- techniques: ``panetId`` (a PaNET IRI), else the technique's ``pid`` or ``name``,
  normalised to PaNET ids when the portal knows them;
- instrument: ``instrument.name``; start time: ``creationDate``; ``size``.

Storage location: the spec carries only file ``name``/``path``, so the location is built
from ``location_template``: ``{files_path}`` (the folder common to the files' paths, the
default), ``{proposal}``, ``{instrument}``, ``{pid}`` and ``{dataset}`` (the pid after its last
"/"). E.g. ``/data/visitor/{proposal}/{instrument}/{dataset}`` needs no file listing at all.
A placeholder with no value gives no location (the mount plan then refuses the dataset), so
a template never widens to a whole storage root.

Filters: ``text`` goes to the server (the spec's ``{"where": {"text": ...}}`` operator). The
technique, proposal and instrument filters are applied here, on the included relations:
the spec filters on relations with an ``include`` scope, and the reference implementation
drops non-matching datasets *after* ``limit``/``skip`` ("sanitize" mixin), so pages come
back short or empty while more matches follow, and paging could not tell where they end.

The token: the spec defines no authentication yet (public data only, ``doc/api-calls.md``);
the reference server is LoopBack 3 with its stock access tokens, read from the
``access_token`` query parameter or the ``X-Access-Token`` / ``Authorization`` headers. The
portal sends ``X-Access-Token: <token>`` (LoopBack base64-decodes ``Authorization: Bearer``
values by default, and a token in the URL would end up in access logs); ``token_header`` and
``token_scheme`` change that. Group grants are not in the spec, so only proposal membership
and open data give access here. Imports nothing from JupyterHub.
"""

from __future__ import annotations

import posixpath
from string import Formatter
from typing import Any
from urllib.parse import quote

from traitlets import TraitError, Unicode, default, validate

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
PLACEHOLDERS = ("files_path", "proposal", "instrument", "pid", "dataset")


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
    """Datasets from a facility's PaNOSC Search API, asked with each user's own token."""

    location_template = Unicode(
        "{files_path}",
        config=True,
        help="Storage location of a dataset, from {files_path} (folder common to its files),"
        " {proposal}, {instrument}, {pid} and {dataset} (the pid after its last '/'),"
        " e.g. /data/visitor/{proposal}/{instrument}/{dataset}.",
    )

    @default("token_header")
    def _default_token_header(self) -> str:
        return "X-Access-Token"

    @default("token_scheme")
    def _default_token_scheme(self) -> str:
        return ""

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

    def _include(self) -> list[dict[str, str]]:
        relations = ["documents", "techniques", "instrument"]
        if "files_path" in _fields(self.location_template):
            relations.append("files")
        return [{"relation": r} for r in relations]

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
        pid = str(record["pid"])
        documents = [d for d in record.get("documents") or [] if isinstance(d, dict)]
        proposal_doc = next((d for d in documents if d.get("type") == "proposal"), {})
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
        )

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self.readable(user, self.records(user, DATASETS, {"include": self._include()}))

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        path = f"{DATASETS}/{quote(pid, safe='')}"
        try:
            record = self.get_json(user, path, filter_param({"include": self._include()}))
        except NotFound:
            raise DatasetNotFound(pid) from None
        found = self.readable(user, [record] if isinstance(record, dict) else [])
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
        query: dict[str, Any] = {"include": self._include()}
        if text:
            query["where"] = {"text": text}
        wanted = techniques.descendants(technique) if technique else set()
        found = [
            d
            for d in self.readable(user, self.records(user, DATASETS, query))
            if (not wanted or wanted.intersection(d.techniques))
            and (not proposal or d.proposal == proposal)
            and (not instrument or d.instrument.casefold() == instrument.casefold())
        ]
        return found[offset : offset + limit]


__all__ = ["PLACEHOLDERS", "SearchApiCatalogue"]
