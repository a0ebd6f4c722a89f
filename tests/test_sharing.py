"""Sharing a running session, on a real hub, OIDC provider and Docker engine.

alice owns the sessions. bob is a member of ES1001 (her CeO2 powder data); carol is not.
sam is support staff (group ``local-contacts``, ``sharing.support_groups``) and a member of
no proposal. Each share is asked of the local catalogue, whose proposals.yaml the tests edit
in their own data tree.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from playwright.sync_api import Browser, expect

from portal.demo.sampledata import DEMO_USERS, generate
from portal.render import SHARING_SERVICE, render_config
from portal.settings import SettingsError, parse
from spawner.environments import load_environments
from spawner.shares import NoClaims, grantee_user
from tests.support.accessibility import assert_accessible
from tests.support.browser import sign_in
from tests.support.docker_hub import docker_hub
from tests.support.paths import ROOT
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider, demo_provider

CEO2 = "ES1001/ID22/ceo2_powder_0001"  # alice and bob (ES1001); embargoed for others
SAXS = "OD2019/ID02/agbh_saxs_0001"  # open data
USERS = ("alice", "bob", "carol", "sam", "rita")
AUTH_CACHE = 2  # seconds a server reuses the hub's answer (sharing.auth_cache)
AUDIT = 3  # seconds between access audits


# -- configuration, without a hub ----------------------------------------------------------

BASE = "auth: {issuer: https://id.example.eu, client_id: portal}\ncatalogue: {backend: local, local: {data_root: /data}}\n"  # noqa: E501


def test_users_cannot_share_directly_and_the_service_holds_only_sharing() -> None:
    config = render_config(parse(BASE + "sharing: {support_groups: [local-contacts]}\n"))
    roles = {r["name"]: r for r in config["JupyterHub"]["load_roles"]}
    assert roles["user"]["scopes"] == ["self"]  # JupyterHub's 'self' has no 'shares'
    assert roles[SHARING_SERVICE]["scopes"] == ["shares", "read:users:name", "read:groups:name"]
    assert roles[SHARING_SERVICE]["services"] == [SHARING_SERVICE]
    assert "shares" not in roles["portal-admin"]["scopes"]
    assert {"name": SHARING_SERVICE} in config["JupyterHub"]["services"]  # no token in config
    assert config["PortalSharing"] == {"support_groups": ["local-contacts"]}
    assert config["Spawner"]["args"] == ["--HubOAuth.cache_max_age=30"]


def test_sharing_settings_errors_name_their_line() -> None:
    with pytest.raises(SettingsError, match=r"portal.yaml:4: sharing.auth_cache"):
        parse(BASE + "sharing:\n  auth_cache: 0\n")
    with pytest.raises(SettingsError, match=r"unknown key 'support_group'"):
        parse(BASE + "sharing:\n  support_group: [x]\n")


def test_a_grantee_who_never_signed_in_is_refused() -> None:
    with pytest.raises(NoClaims, match="has never signed in"):
        grantee_user("zoe", None)
    assert grantee_user("bob", {"proposals": ["ES1001"]}).proposals == {"ES1001"}


# -- on a real hub and Docker engine ---------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility") / "data"
    generate(root)
    return root


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = demo_provider(tmp_path_factory.mktemp("op"), "alice", "bob", "carol")
    # rita's membership comes only from the catalogue's proposals.yaml, which tests edit
    p.set_user("rita@umbrella.demo", preferred_username="rita", groups=["researchers"])
    p.set_user(
        "sam@umbrella.demo",
        preferred_username="sam",
        groups=["researchers", "local-contacts"],
        proposals=[],
    )
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider: Provider, data: Path, tmp_path_factory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    with docker_hub(
        provider,
        folder,
        data,
        images=load_environments(),
        users=USERS,
        spawner={"processed_root": str(folder / "processed"), "audit_interval": AUDIT},
        sharing={"support_groups": ["local-contacts"], "auth_cache": AUTH_CACHE},
    ) as h:
        yield h


@pytest.fixture(scope="module")
def clients(hub: Hub) -> dict[str, PortalClient]:
    """Everyone signed in once (a grantee must have claims), alice's sessions started."""
    subs = {n: DEMO_USERS[n]["sub"] for n in ("alice", "bob", "carol")} | {
        "sam": "sam@umbrella.demo",
        "rita": "rita@umbrella.demo",
    }
    signed = {}
    for name, sub in subs.items():
        signed[name] = PortalClient(hub.url)
        signed[name].login(sub)
    return signed


def sharing(client: PortalClient, **body: str) -> requests.Response:
    """What the home page's script posts to /hub/sharing."""
    return client.http.post(
        f"{client.hub_url}/hub/sharing", json=body, headers=client.xsrf_headers(), timeout=60
    )


def shares(client: PortalClient, server: str) -> list[dict]:
    return client.http.get(f"{client.hub_url}/hub/sharing", timeout=30).json()[server]["shares"]


def enters(client: PortalClient, owner: str, server: str) -> int:
    """The status of ``client``'s API call into another user's server."""
    return client.api("GET", f"user/{owner}/{server}/api/contents").status_code


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def set_members(data: Path, proposal: str, members: list[str]) -> None:
    path = data / "proposals.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["proposals"][proposal]["members"] = members
    path.write_text(yaml.safe_dump(doc))


@pytest.mark.e2e
@pytest.mark.docker
def test_attack_a_user_cannot_share_through_the_hub_api(clients) -> None:
    """alice skips the portal and asks JupyterHub's shares API to let carol in."""
    alice = clients["alice"]
    alice.spawn("attacked", {"type": "lab", "datasets": [CEO2]})
    try:
        r = alice.api("POST", "hub/api/shares/alice/attacked", json={"user": "carol"})
        assert r.status_code == 403, r.text
        code = alice.api("POST", "hub/api/share-codes/alice/attacked", json={}).status_code
        assert code == 403  # nor a share code to hand out
        assert shares(alice, "attacked") == []
        assert enters(clients["carol"], "alice", "attacked") in (403, 404)
    finally:
        alice.stop("attacked")


@pytest.mark.e2e
@pytest.mark.docker
def test_sharing_with_a_non_member_is_refused_naming_the_dataset(clients) -> None:
    alice = clients["alice"]
    alice.spawn("refused", {"type": "lab", "datasets": [CEO2]})
    try:
        r = sharing(alice, action="share", server="refused", name="carol")
        assert r.status_code == 403
        assert CEO2 in r.json()["message"] and "carol may not read" in r.json()["message"]
        r = sharing(alice, action="share", server="refused", name="researchers", kind="group")
        assert r.status_code == 403 and CEO2 in r.json()["message"]  # carol is in the group
        assert sharing(alice, action="share", server="refused", name="nobody").status_code == 400
        assert (
            sharing(clients["bob"], action="share", server="refused", name="carol").status_code
            == 404
        )
        assert shares(alice, "refused") == []
        assert enters(clients["carol"], "alice", "refused") in (403, 404)
    finally:
        alice.stop("refused")


@pytest.mark.e2e
@pytest.mark.docker
@pytest.mark.browser
def test_a_member_opens_the_shared_lab_in_the_browser_until_revoked(
    browser: Browser, hub: Hub, provider: Provider, clients, artifacts: Path
) -> None:
    alice_api, bob_api = clients["alice"], clients["bob"]
    alice_api.spawn("shared", {"type": "lab", "datasets": [CEO2]})
    try:
        owner = browser.new_context(viewport={"width": 1300, "height": 800})
        owner.set_default_timeout(60_000)
        home = owner.new_page()
        sign_in(home, hub.url, provider.issuer, DEMO_USERS["alice"]["sub"], "/hub/home")
        row = home.locator("tr.portal-sharing[data-server-name='shared']")
        row.get_by_label("Share shared with (name)").fill("bob")
        row.get_by_role("button", name="Share", exact=True).click()
        expect(row.locator(".portal-share[data-name='bob']")).to_be_visible()
        expect(home.locator("#portal-notice")).to_contain_text("shared is shared with bob")
        # Refused, and said why, on the same page.
        row = home.locator("tr.portal-sharing[data-server-name='shared']")
        row.get_by_label("Share shared with (name)").fill("carol")
        row.get_by_label("Share shared with (name)").press("Enter")  # by keyboard
        expect(home.locator("#portal-error")).to_contain_text(f"carol may not read {CEO2}")
        home.mouse.move(0, 0)  # no hover state in the contrast check
        assert_accessible(home)

        collaborator = browser.new_context(viewport={"width": 1300, "height": 800})
        collaborator.set_default_timeout(120_000)
        lab = collaborator.new_page()
        sign_in(lab, hub.url, provider.issuer, DEMO_USERS["bob"]["sub"], "/hub/home")
        lab.goto(f"{hub.url}/user/alice/shared/lab/tree/datasets/ES1001")
        # JupyterHub asks bob, once, to let alice's server know who he is.
        authorize = lab.get_by_role("button", name="Authorize")
        authorize.wait_for(timeout=30_000)
        lab.screenshot(path=artifacts / "sharing-collaborator-authorize.png")
        authorize.click()
        lab.locator(".jp-DirListing-item", has_text="ceo2_powder_0001").wait_for()
        lab.wait_for_timeout(3000)
        lab.screenshot(path=artifacts / "sharing-collaborator-lab.png")
        assert enters(bob_api, "alice", "shared") == 200

        # sam asks to join; alice sees it in place, next to bob's share.
        r = clients["sam"].http.post(
            f"{hub.url}/hub/support",
            data={
                "user": "alice",
                "server": "shared",
                "_xsrf": clients["sam"].xsrf_headers()["X-XSRFToken"],
            },
            timeout=30,
        )
        assert r.status_code == 200 and "Asked alice" in r.text
        request = home.locator(".portal-request[data-requester='sam']")
        expect(request).to_be_visible(timeout=30_000)
        home.locator("#portal-error").evaluate("e => e.classList.add('d-none')")
        home.screenshot(path=artifacts / "home-sharing.png", full_page=True)
        home.mouse.move(0, 0)  # no hover state in the contrast check
        assert_accessible(home)
        request.get_by_role("button", name="Decline").click()
        expect(request).to_have_count(0)

        # Revoke: bob's open lab and his API calls lose access within the server's cache.
        home.get_by_role("button", name="Stop sharing shared with bob").click()
        expect(home.locator(".portal-share[data-name='bob']")).to_have_count(0)
        wait_for(
            lambda: enters(bob_api, "alice", "shared") in (403, 404),
            AUTH_CACHE + 15,
            "bob still enters after the share was revoked",
        )
        response = lab.goto(f"{hub.url}/user/alice/shared/api/contents")
        assert response is not None and response.status in (403, 404)
        owner.close()
        collaborator.close()
    finally:
        alice_api.stop("shared")


@pytest.mark.e2e
@pytest.mark.docker
def test_the_audit_ends_a_share_when_the_grantee_leaves_the_proposal(clients, data) -> None:
    alice, rita = clients["alice"], clients["rita"]  # rita: a member by the catalogue only
    members = yaml.safe_load((data / "proposals.yaml").read_text())["proposals"]["ES1001"][
        "members"
    ]
    set_members(data, "ES1001", [*members, "rita"])
    alice.spawn("audited", {"type": "lab", "datasets": [CEO2]})
    try:
        assert sharing(alice, action="share", server="audited", name="rita").status_code == 200
        wait_for(lambda: enters(rita, "alice", "audited") == 200, 30, "rita never entered")
        set_members(data, "ES1001", members)  # the facility removes rita
        wait_for(lambda: shares(alice, "audited") == [], AUDIT + 60, "the audit kept the share")
        wait_for(
            lambda: enters(rita, "alice", "audited") in (403, 404),
            AUTH_CACHE + 15,
            "rita still enters after the audit",
        )
        assert alice.api("GET", "user/alice/audited/api/status").status_code == 200  # alice stays
    finally:
        set_members(data, "ES1001", members)
        alice.stop("audited")


@pytest.mark.e2e
@pytest.mark.docker
def test_support_asks_the_owner_accepts_and_access_ends_at_stop(clients, hub) -> None:
    alice, sam, carol = clients["alice"], clients["sam"], clients["carol"]
    # Only support staff may ask.
    assert carol.http.get(f"{hub.url}/hub/support?user=alice", timeout=30).status_code == 403
    alice.spawn("helpdesk", {"type": "lab", "datasets": [SAXS]})  # open data only
    alice.spawn("private", {"type": "lab", "datasets": [CEO2]})
    try:
        page = sam.http.get(f"{hub.url}/hub/support?user=alice", timeout=30)
        assert page.status_code == 200 and "helpdesk" in page.text and CEO2 not in page.text
        xsrf = sam.xsrf_headers()["X-XSRFToken"]
        for server in ("helpdesk", "private"):
            r = sam.http.post(
                f"{hub.url}/hub/support",
                data={"user": "alice", "server": server, "_xsrf": xsrf},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        assert enters(sam, "alice", "helpdesk") in (403, 404)  # asking grants nothing
        listed = alice.http.get(f"{hub.url}/hub/sharing", timeout=30).json()
        assert listed["helpdesk"]["requests"] == ["sam"] and listed["private"]["requests"] == [
            "sam"
        ]

        # The same catalogue check as any share: sam is not in ES1001.
        r = sharing(alice, action="accept", server="private", name="sam")
        assert r.status_code == 403 and CEO2 in r.json()["message"]
        r = sharing(alice, action="decline", server="private", name="sam")
        assert r.status_code == 200
        assert alice.http.get(f"{hub.url}/hub/sharing", timeout=30).json()["private"] == {
            "requests": [],
            "shares": [],
        }

        r = sharing(alice, action="accept", server="helpdesk", name="sam")
        assert r.status_code == 200 and "ends when the session stops" in r.json()["message"]
        wait_for(  # the server may reuse its earlier "no" for sharing.auth_cache seconds
            lambda: enters(sam, "alice", "helpdesk") == 200, AUTH_CACHE + 15, "sam not let in"
        )
        assert sharing(alice, action="accept", server="helpdesk", name="sam").status_code == 404
        alice.stop("helpdesk")
        assert sam.api("GET", "hub/api/users/sam/shared").json()["items"] == []  # ended
        alice.spawn("helpdesk", {"type": "lab", "datasets": [SAXS]})  # a restart starts unshared
        assert enters(sam, "alice", "helpdesk") in (403, 404)
    finally:
        alice.stop("helpdesk")
        alice.stop("private")


def test_home_sharing_picture_is_in_the_docs() -> None:
    """docs/images/home-sharing.png is copied by hand from test-artifacts after a look."""
    assert (ROOT / "docs/images/home-sharing.png").stat().st_size > 10_000


@pytest.mark.e2e
@pytest.mark.docker
@pytest.mark.browser
def test_support_page_asks_by_keyboard_and_is_accessible(
    browser: Browser, hub: Hub, provider: Provider, clients, artifacts: Path
) -> None:
    alice = clients["alice"]
    alice.spawn("kbd", {"type": "lab", "datasets": [SAXS]})
    try:
        context = browser.new_context(viewport={"width": 1100, "height": 700})
        context.set_default_timeout(60_000)
        page = context.new_page()
        sign_in(page, hub.url, provider.issuer, "sam@umbrella.demo", "/hub/support")
        page.get_by_label("User name").fill("alice")
        page.get_by_label("User name").press("Enter")
        ask = page.get_by_role("button", name="Ask to join kbd")
        ask.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_role("status")).to_contain_text("Asked alice to let you join kbd")
        page.screenshot(path=artifacts / "support-ask.png", full_page=True)
        assert_accessible(page)
        listed = alice.http.get(f"{hub.url}/hub/sharing", timeout=30).json()
        assert listed["kbd"]["requests"] == ["sam"]
        context.close()
    finally:
        alice.stop("kbd")
