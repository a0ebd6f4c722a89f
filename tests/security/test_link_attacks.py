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
from tests.support.paths import ROOT
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider, local_hub

pytestmark = pytest.mark.e2e

TOUR = "MA1234/ID21/nexus_tour_0001"
CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    generate(folder / "data")
    provider = demo_provider(folder, "alice")
    courses = {"sources": {"nexus-basics": str(ROOT / "notebooks/nexus-basics")}}
    h = local_hub(provider, folder, folder / "data", courses=courses)
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
        (f"/hub/open?dataset={TOUR}", {"Sec-Fetch-Site": "none"}),  # a link in a mail
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


@pytest.mark.parametrize(
    "headers",
    [CROSS_SITE, {"Sec-Fetch-Site": "none"}, {"Sec-Fetch-Site": "same-origin"}],
    ids=["cross-site", "from-a-mail", "same-origin"],
)
def test_a_spawn_link_the_portal_did_not_make_shows_the_form_and_starts_nothing(
    hub: Hub, alice: PortalClient, headers: dict
) -> None:
    """JupyterHub itself spawns from ``/hub/spawn?opt-...`` on a GET; the portal lets it
    only with a token that /hub/open or /hub/course signed after the user's own click.
    A link in a mail, or one smuggled as ``next`` after a harmless Start, has none."""
    path = f"/hub/spawn/alice/lured?opt-type=lab&opt-datasets={TOUR}"
    for link in (path, path + "&opt-token=9999999999.forged"):
        page = alice.http.get(hub.url + link, headers=headers, timeout=30)
        assert "This link was not made by the portal" in page.text, page.status_code
        assert 'name="datasets"' in page.text  # the spawn form, for her to fill in
    assert servers(alice) == {}


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
    assert "opt-token=" in r.headers["Location"]  # signed for alice and this server
    started = alice.http.get(
        hub.url + r.headers["Location"], headers={"Sec-Fetch-Site": "same-origin"}, timeout=60
    )
    assert "/hub/spawn-pending/alice/lab-nexus-tour-0001" in started.url, started.url
    alice.wait_ready("lab-nexus-tour-0001")
    alice.stop("lab-nexus-tour-0001")
    # An unknown or unreadable dataset is refused before any question is asked.
    r = alice.http.get(
        f"{hub.url}/hub/open?dataset=IH2002/ID19/phantom_tomo_0001", headers=CROSS_SITE, timeout=30
    )
    assert r.status_code == 404 and "not found, or you do not have access" in r.text
