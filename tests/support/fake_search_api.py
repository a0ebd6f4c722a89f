"""A PaNOSC Search API server for the tests, following the reference implementation.

The reference (github ``panosc-eu/search-api``, LoopBack 3, read and run at commit
f7732f55 with ``npm ci`` and ``node .``) cannot be fetched in CI, so this server does
what it does for the requests the portal makes, each behaviour with the file it follows:

- Routes under ``/api`` (``server/config.json`` ``restApiRoot``), model names in any case;
  only ``Datasets``, ``Documents`` and ``Instruments`` are exposed, for ``find`` and
  ``findById`` (``server/model-config.json``, ``common/models/dataset.js``).
- Relations (``common/models/*.json``): a Dataset has ``instrument``, ``techniques``
  (through ``DatasetTechnique``), ``files``, ``samples`` and ``parameters``, and **no**
  ``documents``: including one is an HTTP 500 ("Relation ... is not defined"); a Document
  has ``datasets`` (through ``DocumentDataset``), ``members`` and ``parameters``.
- ``include`` must be an array: a string or an object is a 500 (``common/mixins/
  parameters.js`` calls ``filter.include.filter``; ``server/components/text-search.js``
  calls ``forEach`` on it).
- In the scope of a through relation a plain ``pid`` condition is replaced by the related
  ids, i.e. ignored (``loopback-datasource-juggler/lib/include.js``); inside ``and`` it holds.
- ``where.text`` is a case-insensitive substring (``ilike "%text%"``, so ``%`` and ``_`` are
  wildcards) of a Dataset's ``title``, a Document's ``title`` or ``summary``, also inside
  include scopes; ``find`` only (``server/components/text-search.js``).
- Paging: top-level ``limit``, ``skip`` or ``offset``, no cap, a negative limit is a 400;
  default order by ``pid`` (the memory connector sorts by id).
- After paging, a parent whose included relation has a scope ``where`` and came back empty
  is dropped (``common/mixins/sanitize.js``), so such pages come back short or empty.
- ``find`` results carry ``"score": 0`` (``common/mixins/score.js``); ``findById`` takes
  ``%2F`` in a pid, answers an unknown one with a 404 ``MODEL_NOT_FOUND``, and is neither
  sanitized nor scored.
- No authentication and no access control: tokens are ignored and every record is served
  to everyone, ``isPublic: false`` included (no model has ACLs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from portal.catalogue import techniques
from portal.catalogue.techniques import IRI_PREFIX
from tests.support.catalogue_servers import PID_PREFIX, Answer, Example, JsonServer, iso

#: model -> relation -> (target model, kind): belongsTo, hasMany, through
RELATIONS = {
    "Dataset": {
        "instrument": ("Instrument", "belongsTo"),
        "techniques": ("Technique", "through"),
        "files": ("File", "hasMany"),
        "samples": ("Sample", "through"),
        "parameters": ("Parameter", "hasMany"),
    },
    "Document": {
        "datasets": ("Dataset", "through"),
        "members": ("Member", "hasMany"),
        "parameters": ("Parameter", "hasMany"),
    },
    "Instrument": {"datasets": ("Dataset", "hasMany")},
}
TEXT_FIELDS = {"Dataset": ["title"], "Document": ["title", "summary"], "File": ["name"]}
TEXT_FIELDS |= {"Instrument": ["name", "facility"], "Technique": ["name"]}
ROUTES = {"datasets": "Dataset", "documents": "Document", "instruments": "Instrument"}


class ServerError(Exception):
    """What LoopBack answers with a 500 (the message goes to its log, not the client)."""


def error(status: int, message: str, code: str | None = None) -> Answer:
    body: dict[str, Any] = {"statusCode": status, "name": "Error", "message": message}
    if code:
        body["code"] = code
    return Answer(status, {"error": body})


def like(pattern: str, flags: int = 0) -> re.Pattern:
    """A SQL ``like`` as the memory connector reads it: ``%`` any run, ``_`` one character."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile(f"^{regex}$", flags)


def matches(record: dict[str, Any], where: dict[str, Any]) -> bool:
    """A LoopBack ``where`` on one record (memory connector)."""
    for key, cond in where.items():
        if key == "and":
            ok = all(matches(record, w) for w in cond)
        elif key == "or":
            ok = any(matches(record, w) for w in cond)
        else:
            value = record.get(key)
            if isinstance(cond, dict) and "inq" in cond:
                ok = value in cond["inq"]
            elif isinstance(cond, dict) and "nin" in cond:
                ok = value not in cond["nin"]
            elif isinstance(cond, dict) and ("like" in cond or "ilike" in cond):
                flags = re.IGNORECASE if "ilike" in cond else 0
                pattern = like(cond.get("like", cond.get("ilike")), flags)
                ok = isinstance(value, str) and bool(pattern.match(value))
            elif isinstance(cond, dict) and "neq" in cond:
                ok = value != cond["neq"]
            else:
                ok = value == cond
        if not ok:
            return False
    return True


def with_text(model: str, where: dict[str, Any]) -> dict[str, Any]:
    """``text`` as ``ilike "%text%"`` on the model's text fields (``text-search.js``)."""
    if "text" not in where:
        return where
    rest = {k: v for k, v in where.items() if k != "text"}
    fields = [{f: {"ilike": f"%{where['text']}%"}} for f in TEXT_FIELDS.get(model, ["name"])]
    text = fields[0] if len(fields) == 1 else {"or": fields}
    return {"and": [rest, text]} if rest else text


def project(record: dict[str, Any], fields: Any) -> dict[str, Any]:
    if isinstance(fields, list):
        return {k: v for k, v in record.items() if k in fields}
    if isinstance(fields, dict) and fields:
        return {k: v for k, v in record.items() if fields.get(k)}
    return record


@dataclass
class SearchApiServer(JsonServer):
    """The reference Search API's read-only REST API over an in-memory database."""

    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # model -> rows
    links: dict[tuple[str, str], dict[str, list[str]]] = field(default_factory=dict)

    # -- relations --------------------------------------------------------------------

    def related(self, model: str, record: dict[str, Any], relation: str) -> Any:
        target, kind = RELATIONS[model][relation]
        rows = self.tables.get(target, [])
        if kind == "belongsTo":
            key = record.get(f"{relation}Id")
            return next((r for r in rows if r["pid"] == key), None)
        if kind == "hasMany":
            key = f"{model[0].lower()}{model[1:]}Id"
            return [r for r in rows if r.get(key) == record["pid"]]
        ids = self.links.get((model, relation), {}).get(record["pid"], [])
        return [r for r in rows if r["pid"] in ids]

    def include(self, model: str, records: list[dict], include: Any) -> list[dict]:
        if not isinstance(include, list):  # parameters.js / text-search.js on a non-array
            raise ServerError("filter.include.filter is not a function")
        out = [dict(r) for r in records]
        for item in include:
            relation = item if isinstance(item, str) else item.get("relation")
            scope = {} if isinstance(item, str) else item.get("scope") or {}
            if relation not in RELATIONS.get(model, {}):
                raise ServerError(f'Relation "{relation}" is not defined for {model} model')
            target, kind = RELATIONS[model][relation]
            where = with_text(target, dict(scope.get("where") or {}))
            if kind == "through":
                where.pop("pid", None)  # include.js: filter.where[pid] = {inq: targetIds}
            for record in out:
                value = self.related(model, record, relation)
                found = [value] if isinstance(value, dict) else value or []
                found = [r for r in found if matches(r, where)]
                if scope.get("include"):
                    found = self.include(target, found, scope["include"])
                found = [project(r, scope.get("fields")) for r in found]
                record[relation] = (found[0] if found else None) if kind == "belongsTo" else found
        return out

    def sanitize(self, model: str, records: list[dict], include: list) -> list[dict]:
        """Drop parents whose scoped relation came back empty (``sanitize.js``)."""
        for item in include:
            scope = item.get("scope") or {} if isinstance(item, dict) else {}
            if not (scope.get("where") or scope.get("include")):
                continue
            relation = item["relation"]
            records = [r for r in records if r.get(relation)]
        return records

    # -- the REST API -----------------------------------------------------------------

    def answer(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str], body: Any
    ) -> Answer:
        parts = path.split("/")  # %2F stays encoded here: a raw "/" is another segment
        if method != "GET" or len(parts) < 3 or parts[1] != "api" or len(parts) > 4:
            return error(404, f"Shared class has no method handling {method} {path}")
        model = ROUTES.get(parts[2].lower())
        if model is None:
            return error(404, f"There is no method to handle {method} {path}")
        try:
            query = json.loads(params.get("filter") or "{}")
        except ValueError:
            return error(400, "The filter is not valid JSON")
        try:
            if len(parts) == 4:
                return self.find_by_id(model, unquote(parts[3]), query)
            return self.find(model, query)
        except ServerError:
            return error(500, "Internal Server Error")

    def find(self, model: str, query: dict[str, Any]) -> Answer:
        include = query.get("include", [])
        if "include" in query and not isinstance(include, list):
            raise ServerError("primaryIncludes.forEach is not a function")
        limit = query.get("limit")
        if limit is not None and int(limit) < 0:
            return error(400, f"The limit parameter {limit} is not valid")
        where = with_text(model, dict(query.get("where") or {}))
        found = [r for r in self.tables.get(model, []) if matches(r, where)]
        order = query.get("order") or "pid ASC"
        for clause in reversed([order] if isinstance(order, str) else order):
            name, _, direction = clause.partition(" ")
            found = sorted(found, key=lambda r: str(r.get(name) or ""), reverse=direction == "DESC")
        skip = int(query.get("skip") or query.get("offset") or 0)
        found = found[skip : skip + int(limit)] if limit else found[skip:]
        found = self.sanitize(model, self.include(model, found, include), include)
        return Answer(200, [{**project(r, query.get("fields")), "score": 0} for r in found])

    def find_by_id(self, model: str, pid: str, query: dict[str, Any]) -> Answer:
        for record in self.tables.get(model, []):
            if record["pid"] == pid:
                (found,) = self.include(model, [record], query.get("include", []))
                return Answer(200, project(found, query.get("fields")))
        return error(404, f'Unknown "{model}" id "{pid}".', "MODEL_NOT_FOUND")


def search_api_server(examples: list[Example], publication: list[Example] = ()) -> SearchApiServer:
    """The facility as the reference's ``data/db.json`` would hold it: one proposal
    document per proposal (with its release date when public), and a publication."""
    server = SearchApiServer()
    datasets, instruments, files, techs = [], {}, [], {}
    dataset_techniques: dict[str, list[str]] = {}
    documents: dict[str, dict[str, Any]] = {}
    document_datasets: dict[str, list[str]] = {}
    for e in examples:
        instrument = f"{PID_PREFIX}instrument-{e.instrument.lower()}"
        instruments[instrument] = {"pid": instrument, "name": e.instrument, "facility": "EXAMPLE"}
        tech = f"{PID_PREFIX}panosc-tech-{e.technique}"
        techs[tech] = {
            "pid": tech,
            "name": techniques.get(e.technique).name,
            "panetId": IRI_PREFIX + e.technique,
        }
        datasets.append(
            {
                "pid": e.pid,
                "title": e.title,
                "isPublic": e.is_open,
                "creationDate": iso(e.start),
                "size": 1_048_576,
                "instrumentId": instrument,
            }
        )
        dataset_techniques[e.pid] = [tech]
        files += [
            {
                "id": len(files) + i,
                "name": f"{e.name}_{i:04d}.h5",
                "path": e.storage(),
                "size": 349_525,
                "datasetId": e.pid,
            }
            for i in range(3)
        ]
        release = {"releaseDate": e.public.isoformat() + "T00:00:00.000Z"} if e.public else {}
        documents.setdefault(
            e.proposal,
            {
                "pid": e.proposal,
                "isPublic": e.is_open,
                "type": "proposal",
                "title": f"Proposal {e.proposal}",
                **release,
            },
        )
        document_datasets.setdefault(e.proposal, []).append(e.pid)
    paper = "10.5072/panosc-document1"
    documents[paper] = {"pid": paper, "isPublic": True, "type": "publication", "title": "Paper"}
    document_datasets[paper] = [e.pid for e in publication]
    server.tables = {
        "Dataset": datasets,
        "Instrument": list(instruments.values()),
        "Technique": list(techs.values()),
        "File": files,
        "Document": list(documents.values()),
    }
    server.links = {
        ("Dataset", "techniques"): dataset_techniques,
        ("Document", "datasets"): document_datasets,
    }
    return server
