"""Umbrella sign-in end to end: a real OIDC provider process and a real hub from portal.yaml.

Each identity is configured at the provider (claims as Umbrella or a brokering Keycloak
would release them) and then logs in through the full authorization-code flow.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from portal.demo.sampledata import generate
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e

URN = "urn:geant:umbrellaid.org:group:"


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = Provider(free_port(), tmp_path_factory.mktemp("op") / "op.log", ("--require-nonce", "true"))
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    generate(folder / "data")
    h = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-tests",
                "client_secret": "s3cret",
                "allowed_groups": ["physicists", "staff"],
                "admin_groups": ["staff"],
                "group_prefixes": [URN],
                "discovery_timeout": 10,
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(folder / "data")}},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
            # JupyterHub's full admin role, so tests can read auth_state through the API.
            "hub": {"admin_access": True},
            # Treat every token as about to expire, so every spawn must refresh it first.
            "extra_config": {"UmbrellaOAuthenticator": {"refresh_margin": 1e9}},
        },
        folder,
    )
    h.start()
    yield h
    h.stop()


def login(hub: Hub, provider: Provider, sub: str, **claims: object) -> tuple[PortalClient, object]:
    provider.set_user(sub, **claims)
    client = PortalClient(hub.url)
    return client, client.login(sub)


def me(client: PortalClient) -> dict:
    return client.http.get(
        f"{client.hub_url}/hub/api/user", headers=client.xsrf_headers(), timeout=30
    ).json()


def test_code_flow_uses_pkce_and_a_nonce(hub: Hub, provider: Provider) -> None:
    provider.set_user("sub-ana", preferred_username="ana", groups=["physicists"])
    client = PortalClient(hub.url)
    page = client.http.get(f"{hub.url}/hub/oauth_login", timeout=30)
    query = parse_qs(urlparse(page.url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["nonce"] and query["state"]
    done = client.http.post(page.url, data={"sub": "sub-ana"}, timeout=60)
    assert done.status_code == 200 and done.url.startswith(f"{hub.url}/hub/")
    assert me(client)["name"] == "ana"


def test_allowed_group_member_logs_in(hub: Hub, provider: Provider) -> None:
    client, page = login(hub, provider, "sub-ben", preferred_username="ben", groups=["physicists"])
    assert page.status_code == 200
    user = me(client)
    assert user["name"] == "ben" and user["admin"] is False and user["groups"] == ["physicists"]


def test_admin_group_member_is_admin(hub: Hub, provider: Provider) -> None:
    client, _ = login(hub, provider, "sub-cat", preferred_username="cat", groups="staff")
    assert me(client)["admin"] is True


def test_user_in_no_allowed_group_gets_a_clear_403(hub: Hub, provider: Provider) -> None:
    _, page = login(hub, provider, "sub-dan", preferred_username="dan", groups=["visitors"])
    assert page.status_code == 403
    assert "not in a group allowed to use this portal" in page.text


@pytest.mark.parametrize(
    ("sub", "groups", "expected"),
    [
        ("sub-list", ["physicists", "tomo-users"], ["physicists", "tomo-users"]),
        ("sub-string", "physicists tomo-users", ["physicists", "tomo-users"]),
        ("sub-urn", [f"{URN}physicists", f"{URN}esrf:tomo"], ["esrf:tomo", "physicists"]),
    ],
    ids=["list", "space-separated", "urn"],
)
def test_group_claim_shapes(hub: Hub, provider: Provider, sub, groups, expected) -> None:
    client, _ = login(hub, provider, sub, preferred_username=sub, groups=groups)
    assert sorted(me(client)["groups"]) == expected


def test_groups_are_synced_on_every_login(hub: Hub, provider: Provider) -> None:
    client, _ = login(
        hub, provider, "sub-eve", preferred_username="eve", groups=["physicists", "staff"]
    )
    assert sorted(me(client)["groups"]) == ["physicists", "staff"] and me(client)["admin"]
    client, _ = login(hub, provider, "sub-eve", preferred_username="eve", groups=["physicists"])
    assert me(client)["groups"] == ["physicists"]
    assert me(client)["admin"] is False


def test_username_falls_back_to_a_verified_email_then_sub(hub: Hub, provider: Provider) -> None:
    client, _ = login(
        hub, provider, "sub-fay", email="Fay.Li@esrf.fr", email_verified=True, groups=["physicists"]
    )
    name = me(client)["name"]
    assert re.fullmatch(r"fay\.li-[0-9a-f]{16}", name)  # her verified address, digested
    other, _ = login(
        hub,
        provider,
        "sub-fay2",
        email="fay.li@evil.example",
        email_verified=True,
        groups=["physicists"],
    )
    assert me(other)["name"] != name  # another address: another name, not her account
    client, _ = login(hub, provider, "opaque-7f3a", groups=["physicists"])
    assert me(client)["name"].startswith("u-")


def test_same_username_different_sub_does_not_share_an_account(hub: Hub, provider) -> None:
    first, _ = login(hub, provider, "sub-gus-1", preferred_username="gus", groups=["physicists"])
    assert me(first)["name"] == "gus"
    _, page = login(hub, provider, "sub-gus-2", preferred_username="gus", groups=["physicists"])
    assert page.status_code == 403
    assert "already belongs to another identity" in page.text
    again, page = login(hub, provider, "sub-gus-1", preferred_username="gus", groups=["physicists"])
    assert page.status_code == 200 and me(again)["name"] == "gus"


def auth_state(hub: Hub, provider: Provider, username: str) -> dict:
    admin, _ = login(hub, provider, "sub-root", preferred_username="root", groups=["staff"])
    return admin.api("GET", f"hub/api/users/{username}").json()["auth_state"]


def test_refresh_before_spawn_then_failed_refresh_forces_login(hub: Hub, provider) -> None:
    client, _ = login(hub, provider, "sub-hal", preferred_username="hal", groups=["physicists"])
    before = auth_state(hub, provider, "hal")
    assert before["proposals"] == [] and before["sub"] == "sub-hal"
    client.spawn()  # the spawn refreshes the (nearly expired) tokens first
    after = auth_state(hub, provider, "hal")
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"]
    client.stop()

    provider.revoke("sub-hal")  # e.g. the account was suspended at the facility
    r = client.api("POST", "hub/api/users/hal/server", json={})
    assert r.status_code == 403 and "login again" in r.json()["message"]
    page = client.http.post(  # the spawn form's Start button
        f"{hub.url}/hub/spawn", data={"type": "lab"}, headers=client.xsrf_headers(), timeout=30
    )
    assert page.status_code == 403 and "login again" in page.text
    home = client.http.get(f"{hub.url}/hub/home", timeout=30)
    assert "/hub/login" in home.url  # the stale session is over: log in again


def test_logout_goes_through_end_session(hub: Hub, provider: Provider) -> None:
    client, _ = login(hub, provider, "sub-ivy", preferred_username="ivy", groups=["physicists"])
    r = client.http.get(f"{hub.url}/hub/logout", allow_redirects=False, timeout=30)
    assert r.status_code == 302
    target = urlparse(r.headers["Location"])
    assert (
        f"{target.scheme}://{target.netloc}{target.path}" == f"{provider.issuer}/oauth2/end_session"
    )
    query = parse_qs(target.query)
    assert query["post_logout_redirect_uri"] == [f"{hub.url}/hub/login"]
    assert query["id_token_hint"][0].count(".") == 2
    # The provider confirms, then sends the user back to the hub, logged out.
    confirm = client.http.post(
        f"{provider.issuer}/oauth2/end_session/confirm",
        data={"redirect_uri": query["post_logout_redirect_uri"][0]},
        timeout=30,
    )
    assert confirm.url == f"{hub.url}/hub/login"
    assert client.http.get(f"{hub.url}/hub/api/user", timeout=30).status_code == 403


def test_login_survives_key_rotation(hub: Hub, provider: Provider) -> None:
    client, page = login(hub, provider, "sub-jo", preferred_username="jo", groups=["physicists"])
    assert page.status_code == 200
    old_keys = provider_jwks(provider)
    provider.stop()
    provider.start()  # a new process signs with a new key
    assert provider_jwks(provider) != old_keys
    time.sleep(5)  # the hub re-reads the JWKS at most every 5 s
    client, page = login(hub, provider, "sub-jo", preferred_username="jo", groups=["physicists"])
    assert page.status_code == 200 and me(client)["name"] == "jo"


def provider_jwks(provider: Provider) -> list[str]:
    import requests

    return [k["kid"] for k in requests.get(f"{provider.issuer}/jwks", timeout=10).json()["keys"]]


def test_login_page_offers_sign_in_with_umbrella(hub: Hub) -> None:
    import requests

    page = requests.get(f"{hub.url}/hub/login?next=/hub/spawn", timeout=30)
    assert "Sign in with Umbrella" in page.text
    assert "oauth_login?next=%2Fhub%2Fspawn" in page.text


def test_startup_with_unreachable_issuer_fails_clearly(tmp_path: Path) -> None:
    bad = Hub(
        {
            "auth": {
                "issuer": "http://no-such-host.invalid",
                "client_id": "x",
                "discovery_timeout": 2,
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(tmp_path)}},
        },
        tmp_path,
    )
    started = time.monotonic()
    with pytest.raises(BaseException):  # noqa: B017 (pytest.fail from wait_http)
        bad.start()
    assert time.monotonic() - started < 30
    log = bad.log.read_text()
    assert "OIDC discovery failed for issuer http://no-such-host.invalid" in log
    assert "no-such-host.invalid/.well-known/openid-configuration" in log
