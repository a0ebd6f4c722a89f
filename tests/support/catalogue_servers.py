"""What the test catalogue servers share: a JSON server on a real socket, and one facility.

The servers themselves follow the real servers' code, behaviour by behaviour:
:mod:`tests.support.fake_scicat` (SciCat's NestJS backend, which needs MongoDB and cannot run
here) and :mod:`tests.support.fake_search_api` (the PaNOSC Search API reference implementation,
which runs here by hand but not in CI, which cannot fetch it). This module gives both the
socket, the request log and the failure knobs (``delay``, ``fail_next``), and the facility
(:class:`Example`) they publish, each in its own shape.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PID_PREFIX = "20.500.12269/"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, Any]  # the ``filter`` parameter, parsed (empty if absent or bad)
    headers: dict[str, str]
    body: Any = None


@dataclass
class Answer:
    """A response: status and JSON body (``None`` sends an empty body)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class JsonServer:
    """A JSON API on a real socket; subclasses implement :meth:`answer`."""

    delay: float = 0.0  # seconds to sleep before answering
    fail_next: int = 0  # answer that many requests with HTTP 500
    seen: list[Seen] = field(default_factory=list)

    def answer(
        self, method: str, path: str, params: dict[str, str], headers: dict[str, str], body: Any
    ) -> Answer:
        raise NotImplementedError

    def handle(self, method: str, raw: str, headers: dict[str, str], body: Any) -> Answer:
        url = urlsplit(raw)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            query = json.loads(params.get("filter") or "{}")
        except ValueError:
            query = {}
        self.seen.append(Seen(method, url.path, query, headers, body))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_next > 0:
            self.fail_next -= 1
            return Answer(500, {"statusCode": 500, "message": "Internal server error"})
        return self.answer(method, url.path, params, headers, body)

    @contextmanager
    def running(self) -> Iterator[str]:
        """Serve on a free port in a thread; yields the base URL."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                length = int(headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                answer = api.handle(method, self.path, headers, body)
                data = b"" if answer.body is None else json.dumps(answer.body).encode()
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

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


@dataclass(frozen=True)
class Example:
    """One dataset of the test facility, before any server's encoding of it.

    ``public``: None never public, a past day is open data, a future day an embargo.
    ``groups`` are SciCat access groups besides the proposal's own (its ``ownerGroup``);
    ``shared`` the e-mail addresses SciCat's ``sharedWith`` lists.
    """

    name: str
    proposal: str
    instrument: str
    technique: str
    title: str
    start: datetime
    public: date | None = None
    groups: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()

    @property
    def is_open(self) -> bool:
        return self.public is not None and self.public <= datetime.now(UTC).date()

    @property
    def pid(self) -> str:
        return PID_PREFIX + self.name

    def storage(self, root: str = "/data/visitor") -> str:
        return f"{root}/{self.proposal.lower()}/{self.instrument.lower()}/{self.name}"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
