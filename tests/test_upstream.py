"""The private parts of pinned libraries that portal/upstream.py wraps: each still exists and
still behaves as the portal assumes. When a pin is raised, this file is where it shows."""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
from pathlib import Path

import pytest
from jupyterhub import orm
from jupyterhub.handlers.base import BaseHandler
from jupyterhub.objects import Hub
from jupyterhub.spawner import LocalProcessSpawner, Spawner
from jupyterhub.user import User
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from oauthenticator.generic import GenericOAuthenticator
from traitlets.config import Config

from portal.upstream import (
    apply_kube_profile,
    log_name,
    request_by_token,
    stopping,
    token_to_auth_model,
)
from tests.support.kube import KUBECONFIG


class Claims(GenericOAuthenticator):
    """An authenticator whose userinfo is fixed: what is checked is the model built from it."""

    async def token_to_user(self, token_info: dict) -> dict:
        return {"sub": "u-1", "preferred_username": "Alice", "groups": ["ma1234", "staff"]}


def test_tokens_become_the_auth_model_a_login_returns() -> None:
    authenticator = Claims(
        username_claim="preferred_username",
        manage_groups=True,
        auth_state_groups_key="oauth_user.groups",
        admin_users={"alice"},
    )
    model = asyncio.run(token_to_auth_model(authenticator, {"access_token": "at-1"}))
    assert model["name"] == "alice", "normalised as at login"
    assert model["admin"] is True
    assert sorted(model["groups"]) == ["ma1234", "staff"], "managed groups applied"
    assert model["auth_state"]["access_token"] == "at-1"
    assert model["auth_state"]["oauth_user"]["sub"] == "u-1"


def test_jupyterhub_reads_the_token_flag_after_a_refused_refresh() -> None:
    """JupyterHub sets ``_token_authenticated`` only for API tokens and reads it when
    ``refresh_user`` refuses: the portal sets it for cookie requests."""
    assert "self._token_authenticated = True" in inspect.getsource(BaseHandler)
    assert "not self._token_authenticated" in inspect.getsource(BaseHandler.refresh_auth)

    class Request:
        pass

    cookie, token = Request(), Request()
    token._token_authenticated = True
    assert request_by_token(cookie) is False
    assert cookie._token_authenticated is False, "set, so that JupyterHub can read it"
    assert request_by_token(token) is True


def test_a_profile_is_applied_by_its_name(tmp_path: Path, monkeypatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"  # an API server that is not there: none is called
    kubeconfig.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))

    async def applied(name: str) -> str:  # kubespawner starts its API client in a loop
        spawner = KubeSpawner(
            _mock=True,
            profile_list=[
                {"slug": "base", "display_name": "base", "kubespawner_override": {"image": "b:1"}},
                {"slug": "xrf", "display_name": "xrf", "kubespawner_override": {"image": "x:1"}},
            ],
        )
        apply_kube_profile(spawner, name)
        return spawner.image

    assert asyncio.run(applied("xrf")) == "x:1"
    with pytest.raises(ValueError):
        asyncio.run(applied("nothing"))


# -- JupyterHub's spawner ---------------------------------------------------------------------


def hub_user(name: str, spawner_class: type, config: Config | None = None) -> User:
    """A real JupyterHub user in an in-memory hub database."""
    db = orm.new_session_factory("sqlite://")()
    found = orm.User(name=name)
    db.add(found)
    db.commit()
    settings = {
        "spawner_class": spawner_class,
        "config": config or Config(),
        "hub": Hub(base_url="/hub/"),
        "allow_named_servers": True,
    }
    return User(found, settings=settings)


def test_a_server_has_the_name_the_hub_logs_it_by() -> None:
    user = hub_user("alice", Spawner)
    assert log_name(user.get_or_create_spawner("", "")) == "alice"
    assert log_name(user.get_or_create_spawner("lab-2", "lab-2")) == "alice:lab-2"


def test_a_server_is_stopping_for_the_whole_of_the_hubs_stop_and_only_then() -> None:
    seen: list[tuple[str, bool]] = []

    class Recording(Spawner):
        async def start(self) -> str:
            return "http://127.0.0.1:9"

        async def poll(self) -> int | None:
            seen.append(("poll", stopping(self)))
            return None

        async def stop(self, now: bool = False) -> None:
            seen.append(("stop", stopping(self)))

    async def stop_it() -> None:
        user = hub_user("alice", Recording)
        spawner = user.get_or_create_spawner("lab", "lab")
        spawner.orm_spawner.server = orm.Server()
        user.db.commit()
        assert stopping(spawner) is False
        await user.stop("lab")
        assert stopping(spawner) is False, "over when the stop is"

    asyncio.run(stop_it())
    assert seen == [("poll", True), ("stop", True)]


def test_the_local_spawner_reaches_its_process_only_through_signal() -> None:
    """PortalLocalSpawner overrides ``_signal``: JupyterHub's poll and stop must call it."""
    sent: list[int] = []

    class Recording(LocalProcessSpawner):
        async def _signal(self, sig: int) -> bool:
            sent.append(sig)
            return await super()._signal(sig)

    async def run() -> None:
        proc = subprocess.Popen(["sleep", "60"])
        try:
            spawner = hub_user("alice", Recording).get_or_create_spawner("", "")
            spawner.pid = proc.pid
            spawner.interrupt_timeout = spawner.term_timeout = spawner.kill_timeout = 5
            assert await spawner.poll() is None
            waiter = asyncio.get_running_loop().run_in_executor(None, proc.wait)
            await spawner.stop()
            await waiter
        finally:
            proc.kill()

    asyncio.run(run())
    assert sent[0] == 0, "poll asks whether the process is alive"
    assert signal.SIGINT in sent, "stop interrupts it"
