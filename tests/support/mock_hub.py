"""JupyterHub's own test hub (``jupyterhub.tests.mocking.MockHub``) serving the portal's pages.

This is how dockerspawner and kubespawner test against JupyterHub: a real hub in the test's
process, with its mock authenticator (a user's password is their name) and mock spawner (a
tiny local server), behind a real configurable-http-proxy. The portal's handlers and
templates are taken from :func:`portal.render.render_config`, so the routes are the ones a
site gets; the catalogue is the local one over the generated sample data. A user's Umbrella
claims go into ``auth_state`` (encrypted, as in production) as the authenticator keeps them.
No Docker, no identity provider, no browser: a page answers in milliseconds.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from jupyterhub import crypto
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import async_requests, public_url
from jupyterhub.utils import url_path_join
from traitlets.config import Config

from portal import settings
from portal.catalogue import PortalCatalogue
from portal.demo.sampledata import DEMO_USERS
from portal.render import render_config

#: What the hub takes of the portal's rendered configuration: its pages and templates.
PORTAL_KEYS = ("extra_handlers", "template_paths", "allow_named_servers")


def proxy_command() -> list[str]:
    """configurable-http-proxy, from the virtualenv (setup_portal installs it there)."""
    found = shutil.which(
        "configurable-http-proxy",
        path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    if found is None:
        pytest.fail("configurable-http-proxy is not installed; scripts/test installs it")
    return [found]


@asynccontextmanager
async def portal_mock_hub(data: Path, index: Path, state: Path) -> AsyncIterator[MockHub]:
    """A started MockHub with the portal's pages over the local catalogue of ``data``."""
    portal = settings.parse(
        "auth: {issuer: 'https://login.example.eu', client_id: portal}\n"
        f"hub: {{state_dir: '{state}'}}\n"
        f"catalogue: {{backend: local, local: {{data_root: '{data}', index_path: '{index}'}}}}\n"
    )
    rendered = render_config(portal)
    config = Config()
    for key in PORTAL_KEYS:
        config.JupyterHub[key] = rendered["JupyterHub"][key]
    config.PortalCatalogue = Config(rendered["PortalCatalogue"])
    config.LocalCatalogue = Config(rendered["LocalCatalogue"])
    config.Authenticator.enable_auth_state = True
    config.ConfigurableHTTPProxy.command = proxy_command()
    state.mkdir(parents=True, exist_ok=True)  # the hub's files there, not in the working folder
    config.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    config.ConfigurableHTTPProxy.pid_file = str(state / "jupyterhub-proxy.pid")
    keeper = crypto.CryptKeeper.instance()
    keys, keeper.keys = keeper.keys, [os.urandom(32)]
    PortalCatalogue.clear_instance()
    hub = MockHub.instance(config=config)
    try:
        await hub.initialize([])
        await hub.start()
        yield hub
    finally:
        hub.log.handlers = []
        MockHub.clear_instance()
        PortalCatalogue.clear_instance()
        await hub.stop()
        keeper.keys = keys


class SignedIn:
    """One user's requests to the hub with the cookies of a real login, as a browser sends
    them when a person clicks (``Sec-Fetch-Mode: navigate``); redirects are not followed."""

    def __init__(self, hub: MockHub, name: str, cookies: Any) -> None:
        self.hub, self.name, self.cookies = hub, name, cookies

    def url(self, path: str) -> str:
        return url_path_join(public_url(self.hub), "hub", path)

    def _headers(self, kw: dict[str, Any]) -> dict[str, str]:
        return {"Sec-Fetch-Mode": "navigate", **kw.pop("headers", {})}

    async def get(self, path: str, **kw: Any) -> Any:
        headers = self._headers(kw)
        return await async_requests.get(
            self.url(path), cookies=self.cookies, headers=headers, allow_redirects=False, **kw
        )

    async def post(self, path: str, data: dict[str, str], **kw: Any) -> Any:
        headers = self._headers(kw)
        return await async_requests.post(
            self.url(path),
            data=data,
            cookies=self.cookies,
            headers=headers,
            allow_redirects=False,
            **kw,
        )

    @property
    def xsrf(self) -> str:
        """The XSRF token of this session, as the confirm page's form carries it."""
        return self.cookies["_xsrf"]


async def sign_in(hub: MockHub, name: str) -> SignedIn:
    """A demo user signed in, their claims in ``auth_state`` as the authenticator keeps them
    (a name that is no demo user has no groups and no proposals)."""
    cookies = await hub.login_user(name)
    claims = DEMO_USERS.get(name, {"groups": [], "proposals": []})
    await hub.users[name].save_auth_state(
        {"sub": name, "groups": claims["groups"], "proposals": claims["proposals"]}
    )
    return SignedIn(hub, name, cookies)
