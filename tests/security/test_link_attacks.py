"""Finding 9: a link on another site must not start servers or fetch courses.

A real hub (local backend) and a real OIDC provider; alice is signed in, and an attacker's
page makes her browser request ``/hub/open`` and ``/hub/course/<name>`` (a link, an image,
a redirect: a cross-site GET with her cookies).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from portal.demo.sampledata import DEMO_USERS, generate
from tests.conftest import ROOT, free_port
from tests.portal_client import PortalClient
from tests.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e

TOUR = "MA1234/ID21/nexus_tour_0001"
CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    generate(folder / "data")
    provider = Provider(free_port(), folder / "op.log")
    provider.start()
    claims = {k: v for k, v in DEMO_USERS["alice"].items() if k != "sub"}
    provider.set_user(DEMO_USERS["alice"]["sub"], **claims)
    h = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-link-tests",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(folder / "data")}},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
            "courses": {"sources": {"nexus-basics": str(ROOT / "notebooks/nexus-basics")}},
        },
        folder,
    )
    h.start()
    yield h
    h.stop()
    provider.stop()


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    assert client.login(DEMO_USERS["alice"]["sub"]).status_code == 200
    return client


def servers(client: PortalClient) -> dict:
    return client.api("GET", f"hub/api/users/{client.username()}").json()["servers"]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/hub/open?dataset={TOUR}", CROSS_SITE),
        ("/hub/course/nexus-basics", CROSS_SITE),
        (f"/hub/open?dataset={TOUR}", {"Referer": "https://evil.example/page"}),  # older browsers
        ("/hub/course/nexus-basics", {}),  # no word of where it came from: ask too
    ],
)
def test_a_cross_site_get_starts_nothing_and_asks_first(
    hub: Hub, alice: PortalClient, path: str, headers: dict
) -> None:
    page = alice.http.get(hub.url + path, headers=headers, allow_redirects=False, timeout=30)
    assert page.status_code == 200, page.status_code  # a page, not a redirect to a spawn
    assert re.search(r'<form method="post">', page.text) and 'name="_xsrf"' in page.text
    assert servers(alice) == {}
    # The attacker cannot post the form for her either: no XSRF token, no start.
    forged = alice.http.post(hub.url + path, headers=headers, allow_redirects=False, timeout=30)
    assert forged.status_code == 403
    assert servers(alice) == {}


def test_a_cross_site_spawn_link_shows_the_form_and_starts_nothing(
    hub: Hub, alice: PortalClient
) -> None:
    """JupyterHub itself spawns from ``/hub/spawn?opt-...`` on a GET: not from another site."""
    path = f"/hub/spawn/alice/lured?opt-type=lab&opt-datasets={TOUR}"
    page = alice.http.get(hub.url + path, headers=CROSS_SITE, timeout=30)
    assert "This link comes from another site" in page.text and 'name="datasets"' in page.text
    assert servers(alice) == {}
    started = alice.click(path, timeout=60)  # the same link, from the portal's own page
    assert "/hub/spawn-pending/alice/lured" in started.url or "/user/alice/lured" in started.url
    alice.wait_ready("lured")
    alice.stop("lured")


def test_her_own_click_on_start_opens_the_dataset(hub: Hub, alice: PortalClient) -> None:
    page = alice.http.get(f"{hub.url}/hub/open?dataset={TOUR}", headers=CROSS_SITE, timeout=30)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    started = alice.http.post(
        f"{hub.url}/hub/open?dataset={TOUR}",
        data={"_xsrf": xsrf},
        allow_redirects=False,
        timeout=30,
    )
    assert started.status_code in (302, 303)
    assert "/hub/spawn/alice/lab-nexus-tour-0001?" in started.headers["Location"]


def test_links_of_the_portals_own_pages_go_straight_through(hub: Hub, alice: PortalClient) -> None:
    r = alice.http.get(
        f"{hub.url}/hub/open?dataset={TOUR}",
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 302 and "/hub/spawn/alice/lab-nexus-tour-0001?" in r.headers["Location"]
    # An unknown or unreadable dataset is refused before any question is asked.
    r = alice.http.get(
        f"{hub.url}/hub/open?dataset=IH2002/ID19/phantom_tomo_0001", headers=CROSS_SITE, timeout=30
    )
    assert r.status_code == 404 and "not found, or you do not have access" in r.text
