"""Finding 6: access taken away reaches running sessions and the next spawn.

A real hub (local backend) and a real OIDC provider; membership is revoked in the
catalogue's member list for one user and in the identity provider's claims for another,
while their servers run. The audit period is 2 s here (300 s by default).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.auth import IdentityUnavailable, UmbrellaOAuthenticator
from portal.demo.sampledata import DEMO_USERS, generate
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider, demo_provider, local_hub

pytestmark = pytest.mark.e2e

XRF = "MA1234/ID21/xrf_map_0001"  # MA1234's embargoed map
CEO2 = "ES1001/ID22/ceo2_powder_0001"  # ES1001's embargoed powder pattern
TOUR = "MA1234/ID21/nexus_tour_0001"  # MA1234's open data
ALICE = {k: v for k, v in DEMO_USERS["alice"].items() if k != "sub"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Provider, Path]]:
    folder = tmp_path_factory.mktemp("hub")
    data = folder / "data"
    generate(data)
    # rita is in ES1001 by the member list only; alice in MA1234 by her claim only.
    # and rita in MA1234 too, whose NeXus tour is open data: her processed area is the
    # only thing that membership gives her there.
    text = (data / "proposals.yaml").read_text()
    text = text.replace("members: [alice, bob]", "members: [alice, bob, rita]")
    (data / "proposals.yaml").write_text(text.replace("members: [alice]", "members: [rita]"))
    provider = demo_provider(folder, "alice")
    provider.set_user("sub-rita", preferred_username="rita", groups=["researchers"])
    spawner = {"processed_root": str(folder / "processed"), "audit_interval": 2}
    h = local_hub(provider, folder, data, spawner=spawner)
    h.start()
    yield h, provider, data
    h.stop()
    provider.stop()


def signed_in(hub: Hub, sub: str) -> PortalClient:
    client = PortalClient(hub.url)
    assert client.login(sub).status_code == 200
    return client


def server_processes(hub: Hub, username: str, server: str) -> list[int]:
    """The pids of a local server's processes, found by their JupyterHub environment."""
    wanted = {
        f"JUPYTERHUB_USER={username}".encode(),
        f"JUPYTERHUB_SERVER_NAME={server}".encode(),
        f"JUPYTERHUB_API_URL=http://127.0.0.1:{hub.hub_api_port}/hub/api".encode(),
    }
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if wanted <= set(environ.read_bytes().split(b"\0")):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def wait_stopped(hub: Hub, client: PortalClient, server: str, within: float) -> float:
    """Seconds until the hub forgets the server *and* its processes are gone."""
    username = client.username()
    assert server_processes(hub, username, server), "the server's process was not found"
    started = time.monotonic()
    while time.monotonic() - started < within:
        listed = client.api("GET", f"hub/api/users/{username}").json()["servers"]
        if server not in listed and not server_processes(hub, username, server):
            return time.monotonic() - started
        time.sleep(0.3)
    raise AssertionError(f"server {server!r} still runs {within} s after the revocation")


def test_removal_from_the_member_list_stops_the_running_server(setup) -> None:
    hub, _, data = setup
    rita = signed_in(hub, "sub-rita")
    proposals = data / "proposals.yaml"
    rita.spawn("powder", {"type": "lab", "datasets": [CEO2]})
    proposals.write_text(
        proposals.read_text().replace("members: [alice, bob, rita]", "members: [alice, bob]")
    )
    took = wait_stopped(hub, rita, "powder", within=15)
    print(f"\nmember-list revocation reached the server in {took:.1f} s")
    home = rita.http.get(f"{hub.url}/hub/home", timeout=30).text
    assert "was stopped: you may no longer read the processed area of ES1001," in home
    assert "ES1001/ID22/ceo2_powder_0001" in home
    r = rita.api("POST", "hub/api/users/rita/servers/again", json={"datasets": [CEO2]})
    assert r.status_code == 403  # and no new server with it


def test_a_claim_removed_at_the_provider_stops_the_server_and_the_next_spawn(setup) -> None:
    hub, provider, _ = setup
    alice = signed_in(hub, DEMO_USERS["alice"]["sub"])
    alice.spawn("xrf", {"type": "lab", "datasets": [XRF]})
    provider.set_user(DEMO_USERS["alice"]["sub"], **{**ALICE, "proposals": ["ES1001"]})
    took = wait_stopped(hub, alice, "xrf", within=15)
    print(f"\nclaim revocation reached the server in {took:.1f} s")
    r = alice.api("POST", "hub/api/users/alice/servers/xrf2", json={"datasets": [XRF]})
    assert r.status_code == 403, r.text  # the claims are read again at every spawn
    provider.set_user(DEMO_USERS["alice"]["sub"], **ALICE)


def test_leaving_a_proposal_takes_its_processed_area_away(setup) -> None:
    hub, _, data = setup
    rita = signed_in(hub, "sub-rita")
    rita.spawn("tour", {"type": "lab", "datasets": [TOUR]})
    listing = rita.api("GET", "user/rita/tour/api/contents/datasets/MA1234")
    assert "processed" in {f["name"] for f in listing.json()["content"]}  # hers, as a member
    proposals = data / "proposals.yaml"
    proposals.write_text(proposals.read_text().replace("members: [rita]", "members: []"))
    wait_stopped(hub, rita, "tour", within=15)
    page = rita.http.get(f"{hub.url}/hub/home", timeout=30).text
    assert "you may no longer read the processed area of MA1234" in page


def test_an_identity_the_provider_revoked_loses_its_sessions(setup) -> None:
    hub, provider, _ = setup
    alice = signed_in(hub, DEMO_USERS["alice"]["sub"])
    alice.spawn("before", {"type": "lab", "datasets": [XRF]})
    provider.revoke(DEMO_USERS["alice"]["sub"])  # e.g. her account was suspended
    wait_stopped(hub, alice, "before", within=15)


def test_a_catalogue_outage_stops_nothing(setup) -> None:
    hub, _, data = setup
    alice = signed_in(hub, DEMO_USERS["alice"]["sub"])
    alice.spawn("steady", {"type": "lab", "datasets": [XRF]})
    proposals = data / "proposals.yaml"
    good = proposals.read_text()
    proposals.write_text("proposals: [this is: not valid")  # the catalogue cannot answer
    try:
        time.sleep(6)  # three audit periods
        assert "steady" in alice.api("GET", "hub/api/users/alice").json()["servers"]
    finally:
        proposals.write_text(good)
    alice.stop("steady")


class _User:
    """What the authenticator reads of a hub user: a name and the stored auth_state."""

    def __init__(self, name: str, state: dict) -> None:
        self.name, self._state = name, state

    async def get_auth_state(self) -> dict:
        return self._state


def test_a_session_that_merely_ended_is_not_a_revocation(setup) -> None:
    """Against the real provider: an expired login whose refresh is refused (a session's
    maximum age) says nothing about the user's rights; a live token refused does."""
    _, provider, _ = setup
    auth = UmbrellaOAuthenticator(issuer=provider.issuer, client_id="c", client_secret="s")
    ended = {
        "access_token": "old-access",
        "refresh_token": "old-refresh",
        "token_response": {"token_type": "Bearer", "expires_at": time.time() - 60},
    }
    with pytest.raises(IdentityUnavailable):
        asyncio.run(auth.current_model(_User("alice", ended)))
    revoked = {
        **ended,
        "token_response": {"token_type": "Bearer", "expires_at": time.time() + 3600},
    }
    assert asyncio.run(auth.current_model(_User("alice", revoked))) is None
