"""A SciCat server for the tests, following the code of SciCat's current backend.

SciCat (github ``SciCatProject/backend``, NestJS; read at commit 783086a0) needs MongoDB,
which no registry reachable here provides, so it cannot run in the tests. This server does
what that code does for every request the portal makes, each behaviour with the file it
follows (paths under ``src/``):

- ``GET /api/v3/Datasets`` (``datasets/datasets.controller.ts`` ``findAll``): the filter
  comes from the ``filter`` query parameter or header, both is a 400
  (``datasets/decorators/filter.decorator.ts``); only ``where``, ``fields``, ``include``
  and ``limits`` are read, so a top-level ``limit``/``skip``/``order`` is ignored without an
  error (``datasets/datasets.service.ts`` ``findAllComplete``); ``limits`` default to 100
  records from 0 with **no** sort and no cap, ``limits.order`` is ``"field:asc|desc"`` and
  anything else sorts nothing, an array crashes (500), ``limits.sort`` is an object
  (``common/utils.ts`` ``parseLimitFilters``, ``parseOrderLimits``); a limit of 0 gives 10.
  Top-level ``proposalId``/``instrumentId``/``sampleId`` are renamed to the stored arrays
  and nested ones are not (``convertObsoleteWhereFilterToCurrentSchema``); LoopBack
  operators are renamed to MongoDB's (``common/pipes/filter.pipe.ts`` ``WherePipe``:
  ``inq``, ``nin``, ``and``, ``or``, ``like``, ``ilike`` with ``$options: "i"``, ``gt``...),
  anything else reaches MongoDB as is, where an unknown operator is a 400 (the service
  turns every aggregate error into ``BadRequestException``). Records are returned with
  ``proposalId``/``instrumentId`` strings added beside the arrays (``OutputDatasetObsoleteDto``).
- ``GET /api/v4/datasets`` (``datasets/datasets.v4.controller.ts``): anonymous callers are
  refused (403); the filter's keys must be dataset fields or allowed MongoDB operators,
  else a 400 (``FilterValidationPipe``, ``datasets/types/dataset-lookup.ts``); ``limits``
  default to ``{limit: 10, skip: 0, sort: {createdAt: "desc"}}``, merged with the caller's.
- ``GET /api/v3/datasets/{pid}/thumbnail`` (``datasets/datasets.controller.ts``
  ``thumbnail``, ``checkPermissionsForDatasetExtended``): the pid percent-decoded (Express
  decodes route parameters), 404 ``dataset: {pid} not found`` for an unknown pid, 403
  ``Unauthorized access`` for one the caller may not read, else the ``thumbnail`` of the
  first attachment whose ``datasetId`` is the pid (``attachments/attachments.service.ts``
  ``findOne``, projected to ``{thumbnail}``), or ``{}`` when there is none.
- Access (``casl/abilities/datasets.ability.ts`` and the list's access filter): anonymous
  reads published data only; a user reads ``ownerGroup`` or ``accessGroups`` in their
  groups, ``sharedWith`` holding their e-mail, and published data; ``ADMIN_GROUPS`` read all.
- Tokens (``auth/strategies/jwt.strategy.ts``, ``auth/guards/jwt-auth.guard.ts``): only
  SciCat's own tokens in ``Authorization: Bearer``; any other token is served as
  **anonymous with HTTP 200**, an expired one of its own is a 401 ``SESSION_EXPIRED``.
  ``GET /api/v3/auth/whoami`` answers the user, or an empty body for anonymous
  (``auth/auth.controller.ts``). ``POST /api/v3/auth/login`` (a functional account) and
  ``POST /api/v3/auth/oidc/token`` (an OIDC ID token) answer ``{access_token, expires_in...}``
  with 201 (``auth/auth.service.ts``); the latter is throttled to one request a second per
  client (``app.module.ts`` ``ThrottlerModule``, 429 with ``Retry-After``).

- ``POST /api/v3/Datasets`` of a derived dataset (scicat-backend-next at 4055c962:
  ``datasets/datasets.controller.ts`` lines 663-760, ``create`` and
  ``validateDatasetObsolete`` with ``whitelist``, ``forbidNonWhitelisted``): anonymous is a
  403; the body is validated against ``CreateDerivedDatasetObsoleteDto``
  (``dto/create-derived-dataset-obsolete.dto.ts`` lines 7-42, ``type`` and
  ``datasetName``), ``dto/update-derived-dataset-obsolete.dto.ts`` lines 12-55
  (``investigator`` a string, ``inputDatasets`` and ``usedSoftware`` arrays of strings,
  ``jobParameters`` an object), ``dto/update-dataset-obsolete.dto.ts`` lines 40-337
  (``owner`` string, ``contactEmail`` e-mails, ``sourceFolder`` non-empty, ``creationTime`` an
  ISO date, integers, ``isPublished`` boolean...) and ``common/dto/ownable.dto.ts`` lines
  10-32 (``ownerGroup`` string, ``accessGroups`` strings); an unknown field or a wrong type
  is a 400 listing each problem; creating needs ``ownerGroup`` among the caller's groups
  (``checkPermissionsForObsoleteDatasetCreate``), else 403. Created datasets are kept.

Knobs beyond SciCat: ``leaky`` ignores access (a broken server the portal must not trust),
and ``delay``/``fail_next`` (:class:`tests.support.catalogue_servers.JsonServer`).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from portal.catalogue import techniques
from portal.catalogue.techniques import IRI_PREFIX
from tests.support.catalogue_servers import Answer, Example, JsonServer, iso

#: Stored fields of a dataset (``datasets/schemas/dataset.schema.ts``, ``ownable``...).
FIELDS = {
    "pid", "_id", "owner", "ownerEmail", "orcidOfOwner", "contactEmail", "sourceFolder",
    "sourceFolderHost", "size", "packedSize", "numberOfFiles", "numberOfFilesArchived",
    "creationTime", "type", "validationStatus", "keywords", "description", "datasetName",
    "classification", "license", "version", "datasetlifecycle", "techniques",
    "relationships", "sharedWith", "scientificMetadata", "comment", "principalInvestigators",
    "startTime", "endTime", "creationLocation", "dataFormat", "runNumber", "proposalIds",
    "sampleIds", "instrumentIds", "inputDatasets", "usedSoftware", "jobParameters",
    "ownerGroup", "accessGroups", "instrumentGroup", "isPublished", "createdBy",
    "updatedBy", "createdAt", "updatedAt",
}  # fmt: skip
#: What else a v4 filter may name (``datasets/types/dataset-lookup.ts``).
V4_KEYWORDS = {
    "where", "$in", "$or", "$and", "$nor", "$match", "$eq", "$gt", "$gte", "$lt", "$lte",
    "$ne", "$nin", "$not", "$exists", "$regex", "$options", "include", "fields", "limits",
    "limit", "skip", "sort",
}  # fmt: skip
#: ``WherePipe.replaceOperatorsMap`` (``common/pipes/filter.pipe.ts``).
LOOPBACK_TO_MONGO = {
    "inq": "$in", "nin": "$nin", "and": "$and", "or": "$or", "like": "$regex",
    "ilike": "$regex", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte",
}  # fmt: skip
V3_RENAMES = {"proposalId": "proposalIds", "sampleId": "sampleIds", "instrumentId": "instrumentIds"}


class MongoError(ValueError):
    """What MongoDB refuses; SciCat answers it with a 400."""


def bad_request(message: str) -> Answer:
    return Answer(400, {"message": message, "error": "Bad Request", "statusCode": 400})


# -- MongoDB's query language, as far as SciCat's filters reach it ----------------------


def values(doc: Any, path: str) -> list[Any]:
    """Values at a dotted path, through arrays; an array is itself a value and its elements."""
    found = [doc]
    for part in path.split("."):
        step = []
        for value in found:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and part in item:
                    step.append(item[part])
        found = step
    out = []
    for value in found:
        out.append(value)
        if isinstance(value, list):
            out.extend(value)
    return out


def _compare(op: str, found: list[Any], arg: Any) -> bool:
    scalars = [v for v in found if not isinstance(v, list)]
    if op == "$in":
        return any(v in arg for v in found)
    if op == "$nin":
        return not any(v in arg for v in found)
    if op == "$eq":
        return arg in found
    if op == "$ne":
        return arg not in found
    if op == "$exists":
        return bool(found) == bool(arg)
    checks = {"$gt": "__gt__", "$gte": "__ge__", "$lt": "__lt__", "$lte": "__le__"}
    if op in checks:
        return any(type(v) is type(arg) and getattr(v, checks[op])(arg) is True for v in scalars)
    raise MongoError(f"unknown operator: {op}")


def field_matches(found: list[Any], cond: Any) -> bool:
    if isinstance(cond, dict) and cond and next(iter(cond)).startswith("$"):
        for op, arg in cond.items():
            if not op.startswith("$"):
                raise MongoError(f"unknown operator: {op}")
            if op == "$options":
                if "$regex" not in cond:
                    raise MongoError("$options needs a $regex")
                continue
            if op == "$regex":
                flags = re.IGNORECASE if "i" in cond.get("$options", "") else 0
                regex = re.compile(arg, flags)
                if not any(isinstance(v, str) and regex.search(v) for v in found):
                    return False
            elif op == "$not":
                if field_matches(found, arg):
                    return False
            elif not _compare(op, found, arg):
                return False
        return True
    return cond in found  # equality, an embedded document compared whole


def mongo_matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, cond in query.items():
        if key == "$and":
            ok = all(mongo_matches(doc, q) for q in cond)
        elif key == "$or":
            ok = any(mongo_matches(doc, q) for q in cond)
        elif key == "$nor":
            ok = not any(mongo_matches(doc, q) for q in cond)
        elif key.startswith("$"):
            raise MongoError(f"unknown top level operator: {key}")
        else:
            ok = field_matches(values(doc, key), cond)
        if not ok:
            return False
    return True


def where_pipe(where: Any) -> Any:
    """LoopBack operators to MongoDB's, at every depth (``WherePipe``)."""
    if isinstance(where, list):
        return [where_pipe(w) for w in where]
    if not isinstance(where, dict):
        return where
    out: dict[str, Any] = {}
    for key, value in where.items():
        out[LOOPBACK_TO_MONGO.get(key, key)] = where_pipe(value)
        if key == "ilike":
            out["$options"] = "i"
    return out


def _sort_key(value: Any) -> tuple:
    return (value is not None, str(value) if value is not None else "")


def aggregate(
    records: list[dict[str, Any]], match: dict[str, Any], limits: dict[str, Any]
) -> list[dict[str, Any]]:
    """``$match``, ``$sort`` (if any), ``$skip``, ``$limit`` (``findAllComplete``)."""
    found = [r for r in records if mongo_matches(r, match)]
    for name, direction in reversed(list((limits.get("sort") or {}).items())):
        found = sorted(found, key=lambda r: _sort_key(r.get(name)), reverse=direction != "asc")
    skip = int(limits.get("skip") or 0)
    return found[skip : skip + (int(limits.get("limit") or 0) or 10)]


def flat_keys(value: Any, prefix: str = "") -> list[str]:
    """The dotted keys of an object; arrays are not entered (``FilterValidationPipe``)."""
    if not isinstance(value, dict):
        return [prefix] if prefix else []
    keys = []
    for key, item in value.items():
        keys += flat_keys(item, f"{prefix}.{key}" if prefix else key) if item != {} else [key]
    return keys


# -- the server ------------------------------------------------------------------------


@dataclass
class SciCatUser:
    username: str
    email: str
    groups: frozenset[str]
    password: str = ""


@dataclass
class SciCatServer(JsonServer):
    """SciCat's current backend, for the requests the portal makes."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    #: Attachments as stored (``attachments/schemas/attachment.schema.ts``): ``datasetId``
    #: (the v3 name of the relationship's target) and ``thumbnail``, a data URI.
    attachments: list[dict[str, Any]] = field(default_factory=list)
    users: dict[str, SciCatUser] = field(default_factory=dict)
    id_tokens: dict[str, str] = field(default_factory=dict)  # OIDC ID token -> username
    admin_groups: frozenset[str] = frozenset({"admin"})
    token_ttl: float = 3600.0
    leaky: bool = False
    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # JWT -> user, expiry
    _last_exchange: float = 0.0

    def issue(self, username: str, ttl: float | None = None) -> str:
        """A SciCat token for ``username`` (what ``auth.service.ts`` ``login`` signs)."""
        token = "eyJ" + secrets.token_urlsafe(24)
        self.tokens[token] = (username, time.time() + (self.token_ttl if ttl is None else ttl))
        return token

    def _login_answer(self, username: str) -> Answer:
        token = self.issue(username)
        user = self.users[username]
        return Answer(
            201,
            {
                "access_token": token,
                "id": token,
                "expires_in": self.token_ttl,
                "ttl": self.token_ttl,
                "created": iso_now(),
                "userId": f"user-{username}",
                "user": {"username": username, "email": user.email, "id": f"user-{username}"},
            },
        )

    def caller(self, headers: dict[str, str], params: dict[str, str]) -> SciCatUser | Answer | None:
        """The JWT's user, None for anonymous, or the guard's 401 for an expired token."""
        value = headers.get("authorization") or params.get("access_token") or ""
        scheme, _, token = value.partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return None  # ExtractJwt.fromAuthHeaderAsBearerToken finds nothing it can verify
        username, expires = self.tokens[token]
        if expires <= time.time():
            return Answer(
                401, {"message": "SESSION_EXPIRED", "error": "Unauthorized", "statusCode": 401}
            )
        return self.users[username]

    def answer(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str], body: Any
    ) -> Answer:
        route = path.lower().rstrip("/")
        if method == "POST" and route == "/api/v3/auth/login":
            user = self.users.get(str((body or {}).get("username")))
            if user is None or not user.password or user.password != (body or {}).get("password"):
                return Answer(401, {"message": "Unauthorized", "statusCode": 401})
            return self._login_answer(user.username)
        if method == "POST" and route == "/api/v3/auth/oidc/token":
            now = time.monotonic()
            if now - self._last_exchange < 1.0:
                return Answer(
                    429,
                    {"statusCode": 429, "message": "ThrottlerException: Too Many Requests"},
                    {"Retry-After": "1"},
                )
            self._last_exchange = now
            username = self.id_tokens.get(str((body or {}).get("idToken")))
            if username is None:
                return Answer(
                    401,
                    {
                        "message": "Invalid idToken: unexpected iss value",
                        "error": "Unauthorized",
                        "statusCode": 401,
                    },
                )
            return self._login_answer(username)
        who = self.caller(headers, params)
        if isinstance(who, Answer):
            return who
        if method == "GET" and route == "/api/v3/auth/whoami":
            if who is None:
                return Answer(200, None)  # the handler returns null: an empty body
            return Answer(
                200,
                {
                    "username": who.username,
                    "email": who.email,
                    "currentGroups": sorted(who.groups),
                    "authStrategy": "oidc",
                },
            )
        if method == "GET" and route == "/api/v3/datasets":
            return self.v3_find_all(who, params, headers)
        if method == "POST" and route == "/api/v3/datasets":
            return self.create(who, body)
        if method == "GET" and route == "/api/v4/datasets":
            return self.v4_find_all(who, params)
        thumbnail = re.fullmatch(r"/api/v3/datasets/([^/]+)/thumbnail", path.rstrip("/"), re.I)
        if method == "GET" and thumbnail:
            return self.thumbnail(who, unquote(thumbnail[1]))
        return Answer(
            404, {"message": f"Cannot {method} {path}", "error": "Not Found", "statusCode": 404}
        )

    def access(self, who: SciCatUser | None) -> dict[str, Any] | None:
        """A list's access filter (``updateMergedFiltersForList``, ``addAccessBasedFilters``)."""
        if self.leaky:
            return None
        if who is None:
            return {"isPublished": True}
        if who.groups & self.admin_groups:
            return None
        groups = sorted(who.groups)
        return {
            "$or": [
                {"ownerGroup": {"$in": groups}},
                {"accessGroups": {"$in": groups}},
                {"sharedWith": {"$in": [who.email]}},
                {"isPublished": True},
            ]
        }

    def thumbnail(self, who: SciCatUser | None, pid: str) -> Answer:
        """``thumbnail``: the dataset's permission check, then its first attachment's."""
        dataset = next((d for d in self.datasets if d["pid"] == pid), None)
        if dataset is None:
            return Answer(
                404,
                {"message": f"dataset: {pid} not found", "error": "Not Found", "statusCode": 404},
            )
        access = self.access(who)
        if access is not None and not mongo_matches(dataset, access):
            return Answer(
                403, {"message": "Unauthorized access", "error": "Forbidden", "statusCode": 403}
            )
        attachment = next((a for a in self.attachments if a.get("datasetId") == pid), None)
        if attachment is None or not attachment.get("thumbnail"):
            return Answer(200, {})
        return Answer(200, {"thumbnail": attachment["thumbnail"]})

    def _filter(
        self, params: dict[str, str], headers: dict[str, str], anonymous: bool
    ) -> dict | Answer:
        if "filter" in params and "filter" in headers:
            return bad_request(
                "Using two different types(query and headers) of filters is not supported"
            )
        raw = params.get("filter", headers.get("filter", "{}"))
        try:
            parsed = json.loads(raw)
        except ValueError:
            if anonymous:  # MainDatasetsPublicInterceptor parses first, unguarded
                return Answer(500, "Internal server error")
            return bad_request(f"Invalid JSON in filter: {raw[:50]}")
        return parsed if isinstance(parsed, dict) else {}

    def _run(self, match: dict[str, Any], limits: dict[str, Any]) -> list[dict] | Answer:
        try:
            return aggregate(self.datasets, match, limits)
        except MongoError as e:
            return bad_request(str(e))

    def v3_find_all(
        self, who: SciCatUser | None, params: dict[str, str], headers: dict[str, str]
    ) -> Answer:
        parsed = self._filter(params, headers, who is None)
        if isinstance(parsed, Answer):
            return parsed
        where = {V3_RENAMES.get(k, k): v for k, v in (parsed.get("where") or {}).items()}
        if who is None:
            where["isPublished"] = True  # MainDatasetsPublicInterceptor
        where = where_pipe(where)
        access = self.access(who)
        match = {"$and": [where, access]} if access else where
        limits = parsed.get("limits")
        if isinstance(limits, dict) and "order" in limits and not isinstance(limits["order"], str):
            return Answer(500, "Internal server error")  # .split on a non-string
        found = self._run(match, v3_limits(limits))
        if isinstance(found, Answer):
            return found
        return Answer(200, [obsolete(r) for r in found])

    def create(self, who: SciCatUser | None, body: Any) -> Answer:
        """``POST /api/v3/Datasets`` of a derived dataset (see the module docstring)."""
        if who is None:
            return Answer(
                403, {"message": "Unauthorized access", "error": "Forbidden", "statusCode": 403}
            )
        problems = derived_problems(body)
        if problems:
            return Answer(400, {"message": problems, "error": "Bad Request", "statusCode": 400})
        if body["ownerGroup"] not in who.groups and not who.groups & self.admin_groups:
            return Answer(
                403, {"message": "Unauthorized to create this dataset", "statusCode": 403}
            )
        record = {**body, "pid": body.get("pid") or f"20.500.12345/{secrets.token_hex(8)}"}
        record.update(createdBy=who.username, updatedBy=who.username, createdAt=iso_now())
        record["proposalIds"] = [record.pop("proposalId")] if "proposalId" in record else []
        self.datasets.append(record)
        return Answer(201, obsolete(record))

    def v4_find_all(self, who: SciCatUser | None, params: dict[str, str]) -> Answer:
        if who is None:
            return Answer(
                403, {"message": "Unauthorized access", "error": "Forbidden", "statusCode": 403}
            )
        try:
            parsed = json.loads(params.get("filter") or "{}")
        except ValueError:
            return bad_request("Invalid JSON in filter")
        for key in flat_keys(parsed):
            if any(part not in FIELDS | V4_KEYWORDS for part in key.split(".")):
                return bad_request(f"Property {key} should not exist in the filter object")
        where = parsed.get("where") or {}
        access = self.access(who)
        match = {"$and": [where, access]} if access else where
        limits = {
            "limit": 10,
            "skip": 0,
            "sort": {"createdAt": "desc"},
            **(parsed.get("limits") or {}),
        }
        found = self._run(match, limits)
        return found if isinstance(found, Answer) else Answer(200, found)


#: ``CreateDerivedDatasetObsoleteDto``'s fields and their checks (see the module docstring).
DERIVED_REQUIRED = {
    "owner": "string", "contactEmail": "emails", "sourceFolder": "nonempty",
    "creationTime": "date", "ownerGroup": "string", "investigator": "string",
    "inputDatasets": "strings", "usedSoftware": "strings", "type": "type",
}  # fmt: skip
DERIVED_OPTIONAL = {
    "pid": "string", "version": "string", "datasetName": "string", "ownerEmail": "emails",
    "orcidOfOwner": "string", "sourceFolderHost": "string", "size": "int", "packedSize": "int",
    "numberOfFiles": "int", "numberOfFilesArchived": "int", "validationStatus": "string",
    "keywords": "strings", "description": "string", "classification": "string",
    "license": "string", "isPublished": "bool", "techniques": "array",
    "sharedWith": "strings", "relationships": "array", "datasetlifecycle": "object",
    "scientificMetadata": "object", "scientificMetadataSchema": "string",
    "scientificMetadataValid": "bool", "comment": "string", "dataQualityMetrics": "number",
    "proposalId": "string", "runNumber": "string", "accessGroups": "strings",
    "instrumentGroup": "string", "jobParameters": "object", "jobLogData": "string",
}  # fmt: skip
_EMAIL = re.compile(r"[^@\s;]+@[^@\s;]+\.[^@\s;]+")


def _valid(kind: str, value: Any) -> bool:
    checks = {
        "string": lambda v: isinstance(v, str),
        "nonempty": lambda v: isinstance(v, str) and bool(v.strip()),
        "emails": lambda v: (
            isinstance(v, str) and all(_EMAIL.fullmatch(e.strip()) for e in v.split(";"))
        ),
        "date": lambda v: isinstance(v, str) and _iso_date(v),
        "strings": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "type": lambda v: v in ("raw", "derived"),
    }
    return checks[kind](value)


def _iso_date(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return "T" in value or len(value) == 10


def derived_problems(body: Any) -> list[str]:
    """What ``validateDatasetObsolete`` says of a derived dataset's body (empty: valid)."""
    if not isinstance(body, dict):
        return ["an unknown value was passed to the validate function"]
    problems = [
        f"property {k} should not exist"
        for k in body
        if k not in DERIVED_REQUIRED and k not in DERIVED_OPTIONAL
    ]
    for name, kind in {**DERIVED_REQUIRED, **DERIVED_OPTIONAL}.items():
        if name not in body:
            if name in DERIVED_REQUIRED:
                problems.append(f"{name} must be a valid {kind}")
        elif not _valid(kind, body[name]):
            problems.append(f"{name} must be a valid {kind}")
    return problems


def v3_limits(limits: Any) -> dict[str, Any]:
    """``parseLimitFilters`` for v3: 100 records from 0, unsorted, unless ``limits`` says."""
    if not isinstance(limits, dict):
        return {"limit": 100, "skip": 0, "sort": {}}
    out = {k: v for k, v in limits.items() if k != "order"}
    if "order" in limits:
        name, _, direction = limits["order"].partition(":")
        out["sort"] = {name: direction} if direction in ("asc", "desc") else {}
    out.setdefault("limit", 100)
    out.setdefault("skip", 0)
    return out


def obsolete(record: dict[str, Any]) -> dict[str, Any]:
    """A v3 answer: the stored record plus the first of each array under its old name."""
    out = dict(record)
    for old, new in (
        ("proposalId", "proposalIds"),
        ("instrumentId", "instrumentIds"),
        ("sampleId", "sampleIds"),
    ):
        if record.get(new):
            out[old] = record[new][0]
    if record.get("principalInvestigators"):
        out["principalInvestigator"] = record["principalInvestigators"][0]
    return out


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def scicat_record(e: Example) -> dict[str, Any]:
    """A dataset as SciCat stores it (``dataset.schema.ts``): arrays for proposals and
    instruments, techniques with PaNET IRIs, the proposal as owner group."""
    return {
        "_id": e.pid,
        "pid": e.pid,
        "owner": "Ada Lovelace",
        "ownerEmail": "ada@example-facility.eu",
        "contactEmail": "ada@example-facility.eu",
        "sourceFolder": e.storage(),
        "size": 1_048_576,
        "numberOfFiles": 3,
        "creationTime": iso(e.start),
        "startTime": iso(e.start),
        "endTime": iso(e.start.replace(hour=23)),
        "type": "raw",
        "datasetName": e.title,
        "isPublished": e.is_open,
        "ownerGroup": e.proposal,
        "accessGroups": list(e.groups),
        "sharedWith": list(e.shared),
        "proposalIds": [e.proposal],
        "instrumentIds": [f"instrument-{e.instrument.lower()}"],
        "sampleIds": [],
        "creationLocation": e.instrument,
        "principalInvestigators": ["ada@example-facility.eu"],
        "techniques": [{"pid": IRI_PREFIX + e.technique, "name": techniques.get(e.technique).name}],
        "keywords": [],
        "version": "4.0.0",
        "createdBy": "ingestor",  # the facility's ingestion account
        "updatedBy": "ingestor",
        "createdAt": iso(e.start),
        "updatedAt": iso(e.start),
    }
