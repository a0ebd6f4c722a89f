"""The private parts of pinned libraries that portal/upstream.py wraps: each still exists and
still behaves as the portal assumes. When a pin is raised, this file is where it shows."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

import pytest
from jupyterhub.handlers.base import BaseHandler
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from oauthenticator.generic import GenericOAuthenticator

from portal.upstream import apply_kube_profile, request_by_token, token_to_auth_model
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
