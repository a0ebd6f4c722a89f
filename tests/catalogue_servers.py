"""Real HTTP servers that speak SciCat's API v3 and the PaNOSC Search API, for the tests.

Neither a SciCat nor a Search API server can run on these machines (they need Node.js,
MongoDB or a facility database), so these stand-ins implement the part of each protocol
the portal uses, on a real socket (``ThreadingHTTPServer`` on 127.0.0.1, a free port):

- SciCat: ``GET /api/v3/Datasets?filter=<LoopBack JSON>``; records shaped like SciCat's v3
  ``Dataset`` model; the token in ``Authorization: Bearer``; access by ``isPublished`` or
  the token's groups against ``ownerGroup``/``accessGroups``, as SciCat's Ownable mixin does.
- Search API: ``GET /datasets?filter=...`` and ``GET /datasets/{pid}?filter=...`` with the
  spec's ``include`` relations (documents, techniques, instrument, files) and its ``text``
  operator; the token in ``X-Access-Token``; access by ``isPublic`` or an ``acls`` list, as
  the reference implementation's early auth mixin did (a hidden dataset is a 404 there).

Filters are really parsed and applied (``where`` with and/or/inq/like, ``order``, ``skip``,
``limit``), an unknown token is a 401, and every request is recorded, so tests can see the
token sent, count hits, and check paging. Knobs: ``delay`` (sleep before answering),
``fail_next`` (answer that many requests with 500), ``leaky`` (ignore access, as a buggy
backend would) and ``max_limit`` (cap the page size, as some servers do).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from portal.catalogue import techniques
from portal.catalogue.techniques import IRI_PREFIX

PID_PREFIX = "20.500.12269/"


class BadFilter(ValueError):
    """The filter uses something this server does not implement: answered with HTTP 400."""


# -- LoopBack filters -------------------------------------------------------------------


def _values(record: dict[str, Any], path: str) -> list[Any]:
    """Values at a dotted path; arrays are flattened, as MongoDB does for ``techniques.pid``."""
    found: list[Any] = [record]
    for part in path.split("."):
        step: list[Any] = []
        for value in found:
            items = value if isinstance(value, list) else [value]
            step += [i[part] for i in items if isinstance(i, dict) and part in i]
        found = step
    return [v for value in found for v in (value if isinstance(value, list) else [value])]


def matches(record: dict[str, Any], where: dict[str, Any]) -> bool:
    """Whether ``record`` satisfies a LoopBack ``where`` (equality, and, or, inq, like)."""
    for key, cond in where.items():
        if key == "and":
            ok = all(matches(record, w) for w in cond)
        elif key == "or":
            ok = any(matches(record, w) for w in cond)
        elif isinstance(cond, dict) and "inq" in cond:
            ok = any(v in cond["inq"] for v in _values(record, key))
        elif isinstance(cond, dict) and "like" in cond:
            flags = re.IGNORECASE if "i" in cond.get("options", "") else 0
            regex = re.compile(cond["like"], flags)
            ok = any(isinstance(v, str) and regex.search(v) for v in _values(record, key))
        elif isinstance(cond, dict):
            raise BadFilter(f"operator(s) {sorted(cond)} not implemented")
        else:
            ok = cond in _values(record, key)
        if not ok:
            return False
    return True


def _ordered(records: list[dict[str, Any]], order: str | list[str]) -> list[dict[str, Any]]:
    for clause in reversed([order] if isinstance(order, str) else order):
        name, _, direction = clause.partition(" ")
        records = sorted(
            records, key=lambda r: str(r.get(name) or ""), reverse=direction.upper() == "DESC"
        )
    return records


def apply_filter(records: list[dict[str, Any]], query: dict[str, Any]) -> list[dict[str, Any]]:
    """``where``, then ``order``, then ``skip`` and ``limit``, as LoopBack applies them."""
    found = [r for r in records if matches(r, query.get("where") or {})]
    if "order" in query:
        found = _ordered(found, query["order"])
    skip = int(query.get("skip") or 0)
    limit = int(query.get("limit") or 0)
    return found[skip : skip + limit] if limit else found[skip:]


# -- the servers ------------------------------------------------------------------------


@dataclass
class Seen:
    """One request as the server received it."""

    path: str
    query: dict[str, Any]
    headers: dict[str, str]


@dataclass
class LoopBackServer:
    """A LoopBack-style JSON API on a real socket; subclasses answer ``(status, body)``."""

    tokens: dict[str, str] = field(default_factory=dict)  # token -> username
    delay: float = 0.0
    fail_next: int = 0
    leaky: bool = False
    max_limit: int = 0  # cap on a filter's limit, as some servers have; 0: none
    seen: list[Seen] = field(default_factory=list)

    token_header = "Authorization"
    token_scheme = "Bearer "

    def answer(self, path: str, query: dict[str, Any], user: str | None) -> tuple[int, Any]:
        raise NotImplementedError

    def user_for(self, headers: dict[str, str]) -> str | None:
        """The username the token belongs to, None for anonymous; unknown tokens raise."""
        value = headers.get(self.token_header.lower())
        if value is None:
            return None
        token = value.removeprefix(self.token_scheme)
        if token not in self.tokens:
            raise PermissionError(token)
        return self.tokens[token]

    def handle(self, raw_path: str, headers: dict[str, str]) -> tuple[int, Any]:
        url = urlsplit(raw_path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        query = json.loads(params.get("filter") or "{}")
        self.seen.append(Seen(url.path, query, headers))
        if self.max_limit:
            query = {
                **query,
                "limit": min(int(query.get("limit") or self.max_limit), self.max_limit),
            }
        if self.delay:
            time.sleep(self.delay)
        if self.fail_next > 0:
            self.fail_next -= 1
            return 500, {"error": {"statusCode": 500, "message": "Internal Server Error"}}
        try:
            user = self.user_for(headers)
        except PermissionError:
            return 401, {"error": {"statusCode": 401, "message": "Authorization Required"}}
        try:
            return self.answer(url.path, query, user)
        except BadFilter as e:
            return 400, {"error": {"statusCode": 400, "message": str(e)}}

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a free port in a thread; yields the base URL."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body = api.handle(self.path, headers)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


@dataclass
class SciCatServer(LoopBackServer):
    """SciCat API v3: ``/api/v3/Datasets`` with Ownable access (groups from the token)."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, set[str]] = field(default_factory=dict)  # username -> groups

    def _may_read(self, record: dict[str, Any], user: str | None) -> bool:
        owners = {record.get("ownerGroup"), *record.get("accessGroups", [])}
        return (
            self.leaky or record.get("isPublished") or bool(owners & self.groups.get(user, set()))
        )

    def answer(self, path: str, query: dict[str, Any], user: str | None) -> tuple[int, Any]:
        if path != "/api/v3/Datasets":
            return 404, {"error": {"statusCode": 404, "message": f"no route {path}"}}
        readable = [r for r in self.datasets if self._may_read(r, user)]
        return 200, apply_filter(readable, query)


@dataclass
class SearchApiServer(LoopBackServer):
    """The PaNOSC Search API: ``/datasets`` and ``/datasets/{pid}`` with relations to include.

    ``datasets`` hold every relation plus a server-side ``acls`` list of usernames; answers
    carry only the relations the filter's ``include`` asks for, and never ``acls``.
    """

    datasets: list[dict[str, Any]] = field(default_factory=list)
    token_header = "X-Access-Token"
    token_scheme = ""

    RELATIONS = ("documents", "techniques", "instrument", "files", "parameters", "samples")

    def _shaped(self, record: dict[str, Any], query: dict[str, Any]) -> dict[str, Any]:
        wanted = set()
        for inclusion in query.get("include") or []:
            if set(inclusion) != {"relation"}:
                raise BadFilter(f"include {inclusion} not implemented")
            wanted.add(inclusion["relation"])
        hidden = {"acls", *self.RELATIONS} - wanted
        return {k: v for k, v in record.items() if k not in hidden}

    def _visible(self, user: str | None) -> list[dict[str, Any]]:
        return [r for r in self.datasets if self.leaky or r["isPublic"] or user in r["acls"]]

    def answer(self, path: str, query: dict[str, Any], user: str | None) -> tuple[int, Any]:
        where = dict(query.get("where") or {})
        if "text" in where:  # the spec's text operator: the dataset's title, any case
            where["title"] = {"like": re.escape(where.pop("text")), "options": "i"}
        visible = self._visible(user)
        if path == "/datasets":
            found = apply_filter(visible, {**query, "where": where})
            return 200, [self._shaped(r, query) for r in found]
        if path.startswith("/datasets/"):
            pid = unquote(path.removeprefix("/datasets/"))
            for record in visible:
                if record["pid"] == pid:
                    return 200, self._shaped(record, query)
            message = f'Unknown "Dataset" id "{pid}".'
            return 404, {"error": {"statusCode": 404, "name": "Error", "message": message}}
        return 404, {"error": {"statusCode": 404, "message": f"no route {path}"}}


# -- one facility, three ways of publishing it ------------------------------------------


@dataclass(frozen=True)
class Example:
    """One dataset of the test facility, before any backend's encoding of it.

    ``public``: None never public, a past day is open data, a future day is an embargo.
    ``groups`` are granted access besides the proposal's members; ``acl`` lists the users a
    Search API server grants the dataset to (it has no groups), like the reference's ``acls``.
    """

    name: str
    proposal: str
    instrument: str
    technique: str
    title: str
    start: datetime
    public: date | None = None
    groups: tuple[str, ...] = ()
    acl: tuple[str, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.public is not None and self.public <= datetime.now(UTC).date()

    def storage(self, root: str = "/data/visitor") -> str:
        return f"{root}/{self.proposal.lower()}/{self.instrument.lower()}/{self.name}"


def scicat_record(e: Example) -> dict[str, Any]:
    """A SciCat v3 raw dataset, shaped like the ones SciCat's documentation shows."""
    return {
        "pid": PID_PREFIX + e.name,
        "owner": "Ada Lovelace",
        "ownerEmail": "ada@example-facility.eu",
        "contactEmail": "ada@example-facility.eu",
        "sourceFolder": e.storage(),
        "size": 1_048_576,
        "numberOfFiles": 3,
        "creationTime": e.start.isoformat().replace("+00:00", "Z"),
        "startTime": e.start.isoformat().replace("+00:00", "Z"),
        "endTime": e.start.replace(hour=23).isoformat().replace("+00:00", "Z"),
        "type": "raw",
        "datasetName": e.title,
        "isPublished": e.is_open,
        "ownerGroup": e.proposal,
        "accessGroups": list(e.groups),
        "proposalId": e.proposal,
        "creationLocation": e.instrument,
        "principalInvestigator": "ada@example-facility.eu",
        "techniques": [{"pid": IRI_PREFIX + e.technique, "name": techniques.get(e.technique).name}],
        "keywords": [],
        "version": "3.1.0",
    }


def search_api_record(e: Example) -> dict[str, Any]:
    """A Search API dataset with its relations, shaped like the spec's examples."""
    release = {"releaseDate": e.public.isoformat()} if e.public else {}
    return {
        "pid": PID_PREFIX + e.name,
        "title": e.title,
        "isPublic": e.is_open,
        "creationDate": e.start.isoformat().replace("+00:00", "Z"),
        "size": 1_048_576,
        "score": 0,
        "documents": [
            {
                "pid": e.proposal,
                "isPublic": e.is_open,
                "type": "proposal",
                "title": f"Proposal {e.proposal}",
                **release,
            },
            {
                "pid": "10.5072/panosc-document1",
                "isPublic": True,
                "type": "publication",
                "title": "PaNOSC Test Publication",
            },
        ],
        "techniques": [
            {
                "pid": "20.500.12269/panosc-tech-" + e.technique,
                "name": techniques.get(e.technique).name,
                "panetId": IRI_PREFIX + e.technique,
            }
        ],
        "instrument": {
            "pid": "20.500.12269/" + e.instrument,
            "name": e.instrument,
            "facility": "EXAMPLE",
        },
        "files": [
            {
                "id": f"{e.name}-{i}",
                "name": f"{e.name}_{i:04d}.h5",
                "path": e.storage(),
                "size": 349_525,
            }
            for i in range(3)
        ],
        "acls": list(e.acl),
    }
