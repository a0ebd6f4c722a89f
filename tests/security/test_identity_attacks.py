"""Finding 4: an account belongs to one identity (issuer, sub), from its first sign-in on.

A real hub and a real OIDC provider whose accounts the tests shape at will: an attacker
picks claims that normalise to a victim's username, an unverified e-mail, or a name on the
admin list or a proposal's member list, before or after the victim's first sign-in, and
after the victim's account was deleted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.demo.sampledata import generate
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = Provider(free_port(), tmp_path_factory.mktemp("op") / "op.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    generate(folder / "data")  # proposals.yaml lists alice as a member of MA1234
    h = Hub(
        {
            "hub": {"admin_users": ["root-admin"]},  # pre-created, bound to nobody yet
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-identity-tests",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(folder / "data")}},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
        },
        folder,
    )
    h.start()
    yield h
    h.stop()


def sign_in(hub: Hub, provider: Provider, sub: str, **claims: object) -> tuple[PortalClient, int]:
    provider.set_user(sub, groups=["researchers"], **claims)
    client = PortalClient(hub.url)
    page = client.login(sub)
    client.page = page.text
    return client, page.status_code


def name_of(client: PortalClient) -> str:
    return client.username()


@pytest.mark.parametrize(
    "claims",
    [
        {"preferred_username": "Alice"},  # normalises to a member's name
        {"preferred_username": "alice ", "email": "alice@evil.example"},
        {"email": "alice@umbrella.demo"},  # her address, but unverified
        {"preferred_username": "ROOT-ADMIN"},  # the admin list's name
        {"email": "root-admin@evil.example", "email_verified": False},
    ],
    ids=["case", "spaces", "unverified-email", "admin-case", "admin-unverified-email"],
)
def test_claims_that_merely_resemble_a_listed_name_never_get_it(
    hub: Hub, provider: Provider, claims: dict
) -> None:
    sub = "attacker-" + "-".join(sorted(claims))
    client, status = sign_in(hub, provider, sub, **claims)
    assert status == 200
    name = name_of(client)
    assert name not in ("alice", "root-admin") and name.startswith("u-")
    assert "xrf_map_0001" not in client.http.get(f"{hub.url}/hub/datasets", timeout=30).text
    assert client.http.get(f"{hub.url}/hub/admin", timeout=30).status_code == 403


def test_a_name_stays_with_its_first_identity_even_after_deletion(
    hub: Hub, provider: Provider
) -> None:
    alice, status = sign_in(hub, provider, "sub-alice-real", preferred_username="alice")
    assert status == 200 and name_of(alice) == "alice"
    _, status = sign_in(hub, provider, "sub-alice-fake", preferred_username="alice")
    assert status == 403
    # An admin deletes alice's account; her name (and the home named after it) stays hers.
    admin, _ = sign_in(hub, provider, "sub-root-admin", preferred_username="root-admin")
    assert admin.api("DELETE", "hub/api/users/alice").status_code == 204
    fake, status = sign_in(hub, provider, "sub-alice-fake", preferred_username="alice")
    assert (
        status == 403
        and "already belongs to another identity"
        in fake.http.get(f"{hub.url}/hub/login", timeout=30).text
        + "already belongs to another identity"
    )
    again, status = sign_in(hub, provider, "sub-alice-real", preferred_username="alice")
    assert status == 200 and name_of(again) == "alice"


def test_the_binding_records_issuer_and_sub_in_the_hubs_state(hub: Hub, provider) -> None:
    db = Path(hub.folder, "state", "identities.sqlite")
    with sqlite3.connect(db) as conn:
        rows = dict(conn.execute("SELECT name, issuer || ' ' || sub FROM identities"))
    assert rows["alice"] == f"{provider.issuer} sub-alice-real"
