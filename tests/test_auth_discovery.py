"""OIDC discovery at start-up: every way it can fail ends quickly with a message to act on."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portal.auth import DiscoveryError, UmbrellaOAuthenticator


class Issuer:
    """A local web server playing a (mis)configured issuer."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer.hits += 1
                status, body, kind = issuer.answer()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/umbrella"

    def answer(self) -> tuple[int, str, str]:
        doc = {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/auth",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/certs",
            "end_session_endpoint": f"{self.url}/logout",
        }
        if self.mode == "html":
            return 200, "<html>Welcome to our login portal</html>", "text/html"
        if self.mode == "wrong-issuer":
            return (
                200,
                json.dumps({**doc, "issuer": "https://elsewhere.example"}),
                "application/json",
            )
        if self.mode == "500-then-ok" and self.hits < 3:
            return 503, "busy", "text/plain"
        return 200, json.dumps(doc), "application/json"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    i = Issuer()
    threading.Thread(target=i.server.serve_forever, daemon=True).start()
    yield i
    i.server.shutdown()


def test_discovery_fills_endpoints_but_explicit_ones_win(issuer: Issuer) -> None:
    auth = UmbrellaOAuthenticator(issuer=issuer.url, token_url="https://token.override/x")
    assert auth.authorize_url == f"{issuer.url}/auth"
    assert auth.userdata_url == f"{issuer.url}/userinfo"
    assert auth.jwks_url == f"{issuer.url}/certs"
    assert auth.end_session_url == f"{issuer.url}/logout"
    assert auth.token_url == "https://token.override/x"


def test_discovery_retries_a_busy_issuer(issuer: Issuer) -> None:
    issuer.mode = "500-then-ok"
    auth = UmbrellaOAuthenticator(issuer=issuer.url, discovery_timeout=10)
    assert auth.token_url == f"{issuer.url}/token" and issuer.hits == 3


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("html", "did not return JSON (Content-Type text/html)"),
        ("wrong-issuer", "names issuer 'https://elsewhere.example'"),
    ],
)
def test_invalid_documents_fail_at_once_naming_the_url(issuer, mode: str, message: str) -> None:
    issuer.mode = mode
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        UmbrellaOAuthenticator(issuer=issuer.url, discovery_timeout=20)
    assert time.monotonic() - started < 2  # no point retrying a wrong answer
    assert f"{issuer.url}/.well-known/openid-configuration" in str(info.value)
    assert message in str(info.value)


def test_unknown_host_fails_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(DiscoveryError) as info:
        UmbrellaOAuthenticator(issuer="https://no-such-host.invalid/realms/x", discovery_timeout=2)
    assert time.monotonic() - started < 5
    assert "no-such-host.invalid/realms/x/.well-known/openid-configuration" in str(info.value)
    assert "gave up after 2 s" in str(info.value)


def test_symmetric_algorithms_cannot_be_configured() -> None:
    with pytest.raises(ValueError, match="HS256 not allowed"):
        UmbrellaOAuthenticator(id_token_algorithms=["RS256", "HS256"])
