"""SciCat (API v3) as the portal's catalogue: ``GET /api/v3/Datasets?filter=...``.

Queries are LoopBack filters (``where``, ``order``, ``limit``, ``skip``) sent as the ``filter``
query parameter; every filter (text, technique and its descendants, proposal, instrument)
is applied by SciCat, and access is checked again by the portal (see
:class:`~portal.catalogue.http.HttpCatalogue`).

A record maps to a :class:`~portal.catalogue.model.Dataset` as follows: ``pid``;
``datasetName`` (else the pid) as title; ``sourceFolder`` as the storage location;
``proposalId``; ``creationLocation`` (else ``instrumentId``) as instrument;
``techniques[].pid`` normalised to PaNET ids; ``startTime`` (else ``creationTime``) and
``endTime``; ``size``; ``numberOfFiles``; ``ownerGroup`` plus ``accessGroups`` as the
groups granted access; ``isPublished`` as open data.

The token: by default the user's access token goes as ``Authorization: Bearer <token>``,
which the current SciCat backend (NestJS, serving the ``/api/v3`` routes) reads. The legacy
LoopBack 3 backend base64-decodes a ``Bearer`` value by default: for it set
``c.SciCatCatalogue.token_scheme = ""`` (bare token in ``Authorization``) or
``token_header = "X-Access-Token"``. The token is never put in the URL (``access_token=``),
where proxies and access logs would keep it. Imports nothing from JupyterHub.
"""

from __future__ import annotations

import re
from typing import Any

from portal.catalogue.base import DatasetNotFound
from portal.catalogue.http import (
    PUBLISHED,
    HttpCatalogue,
    parse_time,
    technique_filter,
    technique_id,
)
from portal.catalogue.model import CatalogueUser, Dataset

DATASETS = "/api/v3/Datasets"
#: Newest first, as the interface promises; the pid makes paging stable between equal times.
ORDER = ["creationTime DESC", "pid ASC"]


def _like(text: str, whole: bool = False) -> dict[str, str]:
    """A case-insensitive LoopBack ``like`` (a regular expression on MongoDB) matching ``text``."""
    pattern = re.escape(text)
    return {"like": f"^{pattern}$" if whole else pattern, "options": "i"}


def search_where(
    *, text: str = "", technique: str = "", proposal: str = "", instrument: str = ""
) -> dict[str, Any]:
    """The LoopBack ``where`` for the search filters; each given filter must hold."""
    clauses: list[dict[str, Any]] = []
    if text:
        clauses.append({"or": [{"datasetName": _like(text)}, {"pid": _like(text)}]})
    if technique:
        clauses.append({"techniques.pid": {"inq": sorted(technique_filter(technique))}})
    if proposal:
        clauses.append({"proposalId": proposal})
    if instrument:
        clauses.append(
            {
                "or": [
                    {"creationLocation": _like(instrument, whole=True)},
                    {"instrumentId": instrument},
                ]
            }
        )
    if len(clauses) > 1:
        return {"and": clauses}
    return clauses[0] if clauses else {}


class SciCatCatalogue(HttpCatalogue):
    """Datasets from a SciCat catalogue, asked with each user's own token."""

    def to_dataset(self, record: dict[str, Any]) -> Dataset:
        pid = str(record["pid"])
        groups = [record.get("ownerGroup"), *(record.get("accessGroups") or [])]
        return Dataset(
            pid=pid,
            title=str(record.get("datasetName") or pid),
            proposal=str(record.get("proposalId") or ""),
            instrument=str(record.get("creationLocation") or record.get("instrumentId") or ""),
            location=str(record.get("sourceFolder") or ""),
            techniques=tuple(
                technique_id(t.get("pid"), t.get("name"))
                for t in record.get("techniques") or []
                if isinstance(t, dict)
            ),
            start_time=parse_time(record.get("startTime") or record.get("creationTime")),
            end_time=parse_time(record.get("endTime")),
            public_date=PUBLISHED if record.get("isPublished") is True else None,
            size=int(record.get("size") or 0),
            file_count=int(record.get("numberOfFiles") or 0),
            access_groups=frozenset(str(g) for g in groups if g),
        )

    def _query(self, user: CatalogueUser, where: dict[str, Any]) -> list[Dataset]:
        query: dict[str, Any] = {"order": ORDER}
        if where:
            query["where"] = where
        return self.readable(user, self.records(user, DATASETS, query))

    def datasets_for(self, user: CatalogueUser) -> list[Dataset]:
        return self._query(user, {})

    def get(self, pid: str, user: CatalogueUser) -> Dataset:
        # A where on pid, not GET /Datasets/{pid}: SciCat then answers an embargoed and an
        # unknown pid alike (an empty list), with no 403/404 difference to leak.
        found = self._query(user, {"pid": pid})
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
        filters = search_where(
            text=text, technique=technique, proposal=proposal, instrument=instrument
        )
        return self._query(user, filters)[offset : offset + limit]


__all__ = ["SciCatCatalogue", "search_where"]
