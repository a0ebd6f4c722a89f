"""A test client that signs in to the portal through the real OIDC code flow, like a browser."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from urllib.parse import urljoin

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class PortalClient:
    """One user's browser session against the hub, plus a hub API token once logged in."""

    def __init__(self, hub_url: str) -> None:
        self.hub_url = hub_url.rstrip("/")
        self.http = requests.Session()
        self.token: str | None = None

    def login(self, sub: str) -> requests.Response:
        """Click "Sign in with Umbrella", then pick ``sub`` on the provider's page."""
        page = self.http.get(f"{self.hub_url}/hub/oauth_login?next=/hub/home", timeout=30)
        page.raise_for_status()
        assert "/oauth2/authorize" in page.url, f"not redirected to the provider: {page.url}"
        # The provider's form posts back to the same URL, query string included.
        done = self.http.post(page.url, data={"sub": sub}, timeout=60)
        return done

    def click(self, path: str, timeout: float = 60) -> requests.Response:
        """Follow a link of the portal's own pages, as a browser does (``Sec-Fetch-Site``)."""
        headers = {"Sec-Fetch-Site": "same-origin"}
        return self.http.get(self.hub_url + path, headers=headers, timeout=timeout)

    def xsrf_headers(self) -> dict[str, str]:
        return {"X-XSRFToken": self.http.cookies.get("_xsrf", path="/hub/") or ""}

    def api_token(self) -> str:
        """A hub API token for this user, made through the hub's own REST API."""
        if self.token is None:
            r = self.http.post(
                f"{self.hub_url}/hub/api/users/{self.username()}/tokens",
                json={"note": "tests"},
                headers=self.xsrf_headers(),
                timeout=30,
            )
            r.raise_for_status()
            self.token = r.json()["token"]
        return self.token

    def username(self) -> str:
        r = self.http.get(f"{self.hub_url}/hub/api/user", headers=self.xsrf_headers(), timeout=30)
        r.raise_for_status()
        return r.json()["name"]

    def api(self, method: str, path: str, **kwargs) -> requests.Response:
        """Call the hub API (``/hub/api/...``) or a server (``/user/...``) with the token."""
        headers = {"Authorization": f"token {self.api_token()}", **kwargs.pop("headers", {})}
        return requests.request(
            method,
            urljoin(self.hub_url + "/", path.lstrip("/")),
            headers=headers,
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def spawn(
        self,
        server: str = "",
        options: dict | None = None,
        timeout: float = 120,
        every: float = 0.5,
    ) -> dict:
        """Start a server through the REST API and wait until it is ready (asking ``every``
        seconds)."""
        name = self.username()
        path = (
            f"hub/api/users/{name}/servers/{server}" if server else f"hub/api/users/{name}/server"
        )
        r = self.api("POST", path, json=options or {})
        assert r.status_code in (201, 202), f"spawn refused: {r.status_code} {r.text}"
        return self.wait_ready(server, timeout, every)

    def wait_ready(self, server: str = "", timeout: float = 120, every: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"hub/api/users/{self.username()}").json()
            state = model["servers"].get(server)
            if state and state["ready"]:
                return state
            if not state or not state.get("pending"):
                raise AssertionError(f"server {server!r} failed to start: {model}")
            time.sleep(every)
        raise AssertionError(f"server {server!r} not ready after {timeout} s")

    def stop(self, server: str = "") -> None:
        """Stop a server; a named one is also removed, as the home page's "delete" does."""
        name = self.username()
        path = (
            f"hub/api/users/{name}/servers/{server}" if server else f"hub/api/users/{name}/server"
        )
        r = self.api("DELETE", path, json={"remove": True} if server else None)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server not in self.api("GET", f"hub/api/users/{name}").json()["servers"]:
                return
            time.sleep(0.5)
        raise AssertionError(f"server {server!r} did not stop")

    def run_python(self, code: str, server: str = "", timeout: float = 60) -> str:
        """Run ``code`` in a new kernel of the user's server, as a notebook cell would; its
        printed output (an exception's text included, as a notebook shows it)."""
        base = f"user/{self.username()}/{server}".rstrip("/")
        kernel = self.api("POST", f"{base}/api/kernels", json={"name": "python3"})
        assert kernel.status_code == 201, kernel.text
        kernel_id = kernel.json()["id"]
        try:
            return asyncio.run(
                self._execute(f"{base}/api/kernels/{kernel_id}/channels", code, timeout)
            )
        finally:
            self.api("DELETE", f"{base}/api/kernels/{kernel_id}")

    async def _execute(self, path: str, code: str, timeout: float) -> str:
        url = urljoin(self.hub_url.replace("http", "ws", 1) + "/", path)
        headers = {"Authorization": f"token {self.api_token()}"}
        ws = await websocket_connect(HTTPRequest(url, headers=headers, connect_timeout=timeout))
        msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
        header = {"msg_id": msg_id, "session": session, "username": "test"}
        header.update(msg_type="execute_request", version="5.3")
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        await ws.write_message(
            json.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": {**content, "user_expressions": {}, "stop_on_error": True},
                    "channel": "shell",
                }
            )
        )
        output: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                raw = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
                assert raw is not None, "the kernel's websocket closed"
                msg = json.loads(raw)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = msg["msg_type"]
                if kind == "stream":
                    output.append(msg["content"]["text"])
                elif kind == "error":
                    output.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(output)  # everything the cell printed came before this
        finally:
            ws.close()
