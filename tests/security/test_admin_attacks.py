"""Finding 5: a hub admin must not read other users' data, servers or tokens by default.

A real hub (local backend), a real OIDC provider; dave is an admin through his "admins"
group, alice a researcher with a running server.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from portal.demo.sampledata import DEMO_USERS, generate
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider, local_hub

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    generate(folder / "data")
    provider = demo_provider(folder, "alice", "dave")
    h = local_hub(provider, folder, folder / "data", auth={"admin_groups": ["admins"]})
    h.start()
    yield h
    h.stop()
    provider.stop()


def signed_in(hub: Hub, name: str) -> PortalClient:
    client = PortalClient(hub.url)
    assert client.login(DEMO_USERS[name]["sub"]).status_code == 200
    return client


def test_an_admin_cannot_enter_start_or_read_another_users_session(hub: Hub) -> None:
    alice = signed_in(hub, "alice")
    alice.spawn("", {"type": "lab", "datasets": ["MA1234/ID21/xrf_map_0001"]})
    dave = signed_in(hub, "dave")  # in "admins" only: admitted by that group

    # He manages the hub: the admin page and the list of users and servers.
    assert dave.http.get(f"{hub.url}/hub/admin", timeout=30).status_code == 200
    model = dave.api("GET", "hub/api/users/alice").json()
    assert model["name"] == "alice" and "" in model["servers"]
    # ...but alice's Umbrella tokens are not his to read,
    assert "auth_state" not in dave.api("GET", "hub/api/users/alice").json()
    assert (
        dave.api("GET", "hub/api/users/alice?include_auth_state=1").json().get("auth_state") is None
    )
    # nor her server's files (with his token, or his browser session),
    r = dave.api("GET", "user/alice/api/contents/datasets", allow_redirects=False)
    assert r.status_code == 403, r.text
    page = dave.http.get(f"{hub.url}/user/alice/lab", timeout=30)
    assert "xrf_map_0001" not in page.text and page.status_code in (403, 404), page.status_code
    # nor a server started as her, which would mount her embargoed data,
    r = dave.api("POST", "hub/api/users/alice/servers/spy", json={"datasets": []})
    assert r.status_code in (403, 404), r.text  # JupyterHub: "No access to resources"
    assert dave.http.get(f"{hub.url}/hub/spawn/alice/spy", timeout=30).status_code in (403, 404)
    assert "spy" not in dave.api("GET", "hub/api/users/alice").json()["servers"]
    # nor a token of hers, nor a share of her server with himself.
    assert dave.api("POST", "hub/api/users/alice/tokens", json={}).status_code in (403, 404)
    r = dave.api("POST", "hub/api/shares/alice/", json={"user": "dave"})
    assert r.status_code in (403, 404), r.text

    # He can still stop her server, as running a hub needs.
    r = dave.api("DELETE", "hub/api/users/alice/server")
    assert r.status_code in (202, 204), r.text


def test_an_admin_sees_only_the_data_anyone_may_read(hub: Hub) -> None:
    dave = signed_in(hub, "dave")
    page = dave.http.get(f"{hub.url}/hub/datasets", timeout=30).text
    assert "NeXus tour" in page  # open data
    assert "Zn distribution" not in page  # MA1234's embargoed XRF map
    assert "phantom" not in page.lower()  # IH2002's embargoed tomography
