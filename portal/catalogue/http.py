"""What the HTTP catalogue backends (SciCat, PaNOSC Search API) share, written once.

Both speak LoopBack-style JSON over HTTP, so this module owns everything that is about the
wire rather than about one API: the base URL and the token header, timeouts, retries with
exponential backoff, paging, a short per-user answer cache and the errors a person can act
on. A backend builds its queries (each API pages its own way), says which token to send,
and maps its records to :class:`~portal.catalogue.model.Dataset`.

Calls block: the spawner runs them in a thread (``asyncio.to_thread``), so one instance is
shared between threads; the cache is locked and each thread keeps its own HTTP session.
Imports nothing from JupyterHub.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import requests
from traitlets import Float, Int, Unicode

from portal.catalogue import techniques
from portal.catalogue.base import (
    Catalogue,
    CatalogueError,
    CatalogueUnavailable,
    may_read,
    newest_first,
)
from portal.catalogue.model import CatalogueUser, Dataset

#: The public date given to published / public records: HTTP catalogues report a flag, not
#: the day the embargo ended, and :meth:`Dataset.is_public` only needs a day in the past.
PUBLISHED = date.min


class CatalogueCredentialsRejected(CatalogueError):
    """The catalogue answered 401 or 403 to the user's token: expired, revoked or not its own."""


class NotFound(CatalogueError):
    """The catalogue answered 404; a backend turns it into ``DatasetNotFound(pid)``."""


class _TtlCache:
    """Successful answers for ``ttl`` seconds, keyed by who asked and what was asked.

    The key always holds the user's identity *and* a digest of their token (see
    :meth:`HttpCatalogue._cache_key`), so one user's answer is never served to another, nor
    to the same user once their token changed. Expired entries are dropped on every insert,
    which bounds the size by the request rate times ``ttl``.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple, value: Any, ttl: float) -> None:
        now = time.monotonic()
        with self._lock:
            for old in [k for k, (expires, _) in self._entries.items() if expires <= now]:
                del self._entries[old]
            self._entries[key] = (now + ttl, value)


def _root_cause(error: BaseException) -> str:
    """The innermost reason of a connection error ("Connection refused"), not urllib3's prose."""
    while (inner := error.__cause__ or error.__context__) is not None:
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _seconds(value: str | None) -> float:
    """A ``Retry-After`` in seconds (at most 10), 1 if absent or a date."""
    try:
        return min(10.0, max(0.0, float(value or 1)))
    except ValueError:
        return 1.0


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time from a JSON record (``...Z`` included), or ``None`` if absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def technique_id(*candidates: object) -> str:
    """A PaNET id for a record's technique, from the first candidate the portal knows.

    Catalogues tag techniques with PaNET ids, full IRIs or only names; normalising to the
    plain id lets :func:`techniques.descendants` match them. A technique the portal does not
    know keeps the first value given, so it is shown rather than lost.
    """
    given = [str(c) for c in candidates if c]
    for value in given:
        try:
            return techniques.get(value).pid
        except techniques.UnknownTechnique:
            continue
    return given[0] if given else ""


def json_of(response: requests.Response, url: str, max_bytes: int | None = None) -> Any:
    """The JSON body of a successful answer, or a :class:`CatalogueUnavailable` that says why.

    With ``max_bytes`` (a response sent with ``stream=True``), at most that many bytes are
    read: a larger body is refused before it is held in memory.
    """
    if response.status_code >= 300:
        raise CatalogueUnavailable(
            f"catalogue {url} refused the request (HTTP {response.status_code}):"
            f" {response.text[:200]}"
        )
    try:
        if max_bytes is None:
            return response.json()
        with response:
            body = response.raw.read(max_bytes + 1, decode_content=True)
        if len(body) > max_bytes:
            raise CatalogueUnavailable(f"catalogue {url} answered more than {max_bytes} bytes")
        return json.loads(body)
    except ValueError:
        raise CatalogueUnavailable(f"catalogue {url} did not answer JSON") from None


def filter_param(query: dict[str, Any]) -> dict[str, str]:
    """A LoopBack filter as the ``filter`` query parameter, compact and key-sorted.

    Sorted keys make equal queries equal cache keys.
    """
    return {"filter": json.dumps(query, separators=(",", ":"), sort_keys=True)}


def technique_filter(technique: str) -> set[str]:
    """Every spelling of ``technique`` and its descendants a catalogue may store: id and IRI."""
    wanted = techniques.descendants(techniques.get(technique).pid)
    return wanted | {techniques.IRI_PREFIX + pid for pid in wanted}


class HttpCatalogue(Catalogue):
    """Base of the catalogues that answer over HTTP; configure it as its subclasses' name.

    ``c.HttpCatalogue.timeout = 5`` sets both backends, ``c.SciCatCatalogue.timeout = 5``
    only one. Every answer is access-checked again here with :func:`may_read`: a backend is
    asked with the user's token, but never trusted to have filtered.
    """

    url = Unicode(
        "",
        config=True,
        help="Base URL of the catalogue server, e.g. https://scicat.example-facility.eu.",
    )
    timeout = Float(
        10.0,
        config=True,
        help="Seconds to wait for the server to connect and for each read before giving up.",
    )
    retries = Int(
        2,
        min=0,
        config=True,
        help="Extra attempts after a connection error, a timeout or an HTTP 5xx answer.",
    )
    backoff = Float(
        0.5,
        config=True,
        help="Seconds before the first retry; each further retry waits twice as long.",
    )
    retry_deadline = Float(
        20.0,
        config=True,
        help="No retry starts later than this many seconds after the first attempt, so a"
        " spawn fails within about retry_deadline + timeout when the catalogue is down.",
    )
    cache_ttl = Float(
        30.0,
        min=0,
        config=True,
        help="Seconds a successful answer is reused for the same user and token; 0 disables.",
    )
    page_size = Int(500, min=1, config=True, help="Records asked for per request (limit).")
    max_records = Int(
        20_000,
        min=1,
        config=True,
        help="Stop paging after this many records, whatever the server answers.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cache = _TtlCache()
        self._local = threading.local()

    # -- what a backend provides ------------------------------------------------------

    @abstractmethod
    def to_dataset(self, record: dict[str, Any]) -> Dataset:
        """Map one record of the backend's JSON to a :class:`Dataset`."""

    # -- the wire ---------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def auth_headers(self, user: CatalogueUser) -> dict[str, str]:
        """The headers that authenticate a request made for ``user``; none by default."""
        return {}

    def _cache_key(self, headers: dict[str, str], user: CatalogueUser, url: str, params) -> tuple:
        auth = hashlib.sha256(json.dumps(headers, sort_keys=True).encode()).hexdigest()
        return (user.username, user.sub, auth, url, tuple(sorted(params.items())))

    def send(
        self,
        url: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        json_body: Any = None,
        stream: bool = False,
        creates: str = "",
    ) -> requests.Response:
        """GET (or POST ``json_body``) with retries on connection errors, timeouts, HTTP 429
        and 5xx, bounded in count and time; ``stream``: the body is left to the caller.

        ``creates``: what a POST creates, for one that must never be sent twice. Once such
        a request may have reached the server (a 5xx, a timeout waiting for the answer, a
        connection lost after sending), it may have created its record before failing, so
        it is not retried: :class:`CatalogueUnavailable` says so, naming ``creates``. Only a
        429 or a connection that was never made is retried.
        """
        started = time.monotonic()
        attempt = 0
        method = "GET" if json_body is None else "POST"
        while True:
            wait = 0.0  # what the server asked for (Retry-After), at least
            processed = True  # whether the server may have acted on the request
            try:
                response = self._session().request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    headers=headers,
                    timeout=self.timeout,
                    stream=stream,
                )
                if response.status_code < 500 and response.status_code != 429:
                    return response
                problem = f"it answered HTTP {response.status_code} {response.reason}"
                if response.status_code == 429:  # SciCat lets a client exchange 1 token/s
                    wait, processed = _seconds(response.headers.get("Retry-After")), False
            except requests.ConnectTimeout:
                problem, processed = f"no connection within {self.timeout:g} s", False
            except requests.Timeout:
                problem = f"no answer within {self.timeout:g} s"
            except requests.ConnectionError as e:
                problem = f"cannot connect: {_root_cause(e)}"
                processed = "NewConnectionError" not in repr(e)  # else it was sent
            if creates and processed:
                raise CatalogueUnavailable(
                    f"catalogue {url} failed while registering {creates} ({problem}): it may"
                    f" have been registered anyway, so it was not sent again; search the"
                    f" catalogue for {creates} before publishing again"
                )
            delay = max(wait, self.backoff * 2**attempt)
            attempt += 1
            if attempt > self.retries or time.monotonic() - started + delay > self.retry_deadline:
                tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                raise CatalogueUnavailable(f"catalogue {url} is unavailable: {problem} ({tries})")
            self.log.warning("catalogue %s: %s; retrying in %.2f s", url, problem, delay)
            time.sleep(delay)

    def endpoint(self, path: str) -> str:
        if not self.url:
            raise CatalogueUnavailable(f"{type(self).__name__}.url is not set")
        return self.url.rstrip("/") + path

    def rejected(self, url: str, status: int, user: CatalogueUser) -> CatalogueError:
        """The error for a 401/403 answer; a backend that knows its tokens says more."""
        return CatalogueCredentialsRejected(
            f"catalogue {url} refused the request made for {user.username} (HTTP {status})"
        )

    def get_json(
        self,
        user: CatalogueUser,
        path: str,
        params: dict[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        """The JSON answer to ``GET url + path`` asked for ``user``, cached for ``cache_ttl``.

        With ``max_bytes``, a larger answer is refused while it is read, and nothing is
        cached: what a catalogue's users may upload (attachments) must not fill the hub.
        """
        url = self.endpoint(path)
        params = params or {}
        headers = self.auth_headers(user)
        key = self._cache_key(headers, user, url, params)
        cache = self.cache_ttl > 0 and max_bytes is None
        cached = self._cache.get(key) if cache else None
        if cached is not None:
            return cached
        stream = max_bytes is not None
        response = self.send(url, {"Accept": "application/json", **headers}, params, stream=stream)
        status = response.status_code
        if status in (401, 403):
            raise self.rejected(url, status, user)
        if status == 404:
            raise NotFound(f"catalogue {url}: not found")
        data = json_of(response, url, max_bytes)
        if cache:
            self._cache.put(key, data, self.cache_ttl)
        return data

    def records(
        self, user: CatalogueUser, path: str, page_filter: Callable[[int, int], dict[str, Any]]
    ) -> Iterator[dict]:
        """Every record an endpoint lists, page by page; ``page_filter(skip, limit)`` is the
        ``filter`` parameter of one page.

        A page shorter than asked for is the last one. A page that starts with a record
        already seen means the server ignores ``skip`` (as SciCat's v3 API does with a
        top-level one): the listing stops there rather than reading the same page again.
        """
        skip = 0
        seen: set[Any] = set()
        while skip < self.max_records:
            limit = min(self.page_size, self.max_records - skip)
            page = self.get_json(user, path, filter_param(page_filter(skip, limit)))
            if not isinstance(page, list):
                raise CatalogueUnavailable(
                    f"catalogue {self.endpoint(path)} answered {type(page).__name__}"
                    " where a list of records was expected"
                )
            if page and isinstance(page[0], dict) and page[0].get("pid") in seen:
                self.log.warning(
                    "catalogue %s repeats records at skip=%d: it ignores paging; stopping",
                    self.endpoint(path),
                    skip,
                )
                return
            seen.update(r.get("pid") for r in page if isinstance(r, dict))
            yield from page
            if len(page) < limit:
                return
            skip += len(page)
        self.log.warning("catalogue %s: stopped after %d records", self.endpoint(path), skip)

    # -- access, again, on the portal side --------------------------------------------

    def datasets(self, records: Iterable[Any]) -> Iterator[Dataset]:
        """The records as datasets; one the backend cannot read is a clear error, not a 500.

        Records without a ``pid`` cannot be asked for again at spawn time; they are skipped.
        """
        for record in records:
            if not isinstance(record, dict) or not record.get("pid"):
                continue
            try:
                yield self.to_dataset(record)
            except (TypeError, ValueError, KeyError, AttributeError) as e:
                raise CatalogueUnavailable(
                    f"catalogue {self.url} answered a dataset the portal cannot read"
                    f" (pid {str(record.get('pid'))[:100]!r}: {type(e).__name__}: {e})"
                ) from None

    def readable(self, user: CatalogueUser, records: Iterable[Any]) -> list[Dataset]:
        """The records ``user`` may read by the portal's own rule, as datasets, newest first."""
        today = datetime.now(UTC).date()
        return newest_first(
            [d for d in self.datasets(records) if may_read(d, user, frozenset(), today)]
        )


__all__ = [
    "PUBLISHED",
    "CatalogueCredentialsRejected",
    "HttpCatalogue",
    "NotFound",
    "filter_param",
    "json_of",
    "parse_time",
    "technique_filter",
    "technique_id",
]
