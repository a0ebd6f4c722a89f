"""End to end, without a browser: the real demo stack, the full OIDC code flow, a real spawn.

Runs ``panosc-portal demo`` (OIDC provider process, JupyterHub, configurable-http-proxy,
the local spawner) and talks to it over HTTP only, as a user's browser would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from pathlib import Path

import pytest
from jupyterhub.crypto import CryptKeeper, decrypt

from portal.demo.sampledata import DEMO_USERS
from tests.support.portal_client import PortalClient

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def alice(demo) -> PortalClient:
    client = PortalClient(demo.url)
    page = client.login(DEMO_USERS["alice"]["sub"])
    assert page.url.endswith("/hub/home"), page.url
    client.spawn()
    return client


def listing(client: PortalClient, path: str) -> set[str]:
    r = client.api("GET", f"user/alice/api/contents/{path}")
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    return {item["name"] for item in r.json()["content"]}


def test_researcher_sees_own_and_open_data_only(alice: PortalClient) -> None:
    assert listing(alice, "datasets") == {"MA1234", "ES1001", "OD2019", "datasets.json"}
    assert "xrf_map_0001" in listing(alice, "datasets/MA1234")
    assert "agbh_saxs_0001" in listing(alice, "datasets/OD2019")  # open data


def test_embargoed_dataset_of_another_proposal_is_absent(alice: PortalClient) -> None:
    assert alice.api("GET", "user/alice/api/contents/datasets/IH2002").status_code == 404
    manifest = json.loads(
        alice.api("GET", "user/alice/api/contents/datasets/datasets.json").json()["content"]
    )
    pids = {d["pid"] for d in manifest["datasets"]}
    assert not any(pid.startswith("IH2002/") for pid in pids)
    assert any(pid.startswith("OD2019/") for pid in pids)


def test_reads_a_nexus_file_of_an_allowed_dataset(alice: PortalClient) -> None:
    path = "datasets/MA1234/xrf_map_0001/xrf_map_0001.nxs"
    r = alice.api("GET", f"user/alice/api/contents/{path}", params={"format": "base64"})
    assert r.status_code == 200, r.text
    assert base64.b64decode(r.json()["content"])[:8] == b"\x89HDF\r\n\x1a\n"


def test_writing_into_a_dataset_fails_but_home_is_writable(alice: PortalClient) -> None:
    body = {"type": "file", "format": "text", "content": "overwrite attempt"}
    inside = alice.api(
        "PUT", "user/alice/api/contents/datasets/MA1234/xrf_map_0001/x.txt", json=body
    )
    # the dataset is a read-only bind in alice's sandbox: Jupyter says so
    assert inside.status_code >= 400 and "Read-only file system" in inside.text, inside.text
    replace = alice.api(
        "PUT", "user/alice/api/contents/datasets/MA1234/xrf_map_0001/xrf_map_0001.nxs", json=body
    )
    assert replace.status_code == 403, replace.text  # the file is not writable either
    home = alice.api("PUT", "user/alice/api/contents/notes.txt", json=body)
    assert home.status_code in (200, 201), home.text


def test_admin_sees_the_admin_page(demo) -> None:
    dave = PortalClient(demo.url)
    dave.login(DEMO_USERS["dave"]["sub"])
    page = dave.http.get(f"{demo.url}/hub/admin", timeout=30)
    assert page.status_code == 200 and "admin" in page.text.lower()
    assert dave.api("GET", "hub/api/users").status_code == 200  # admins may list users


def test_researcher_is_not_admin(alice: PortalClient, demo) -> None:
    assert alice.http.get(f"{demo.url}/hub/admin", timeout=30).status_code == 403
    assert alice.api("GET", "hub/api/users").status_code == 403


def server_environments(username: str) -> list[bytes]:
    """The environment of every process running as this user's single-user server."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            data = environ.read_bytes()
        except OSError:
            continue
        if f"JUPYTERHUB_USER={username}".encode() in data.split(b"\0"):
            found.append(data)
    return found


def auth_state_in_database(demo, username: str) -> dict:
    """A user's auth_state, decrypted from the hub's database with the hub's key: admins
    may no longer read it through the API, and that is the point."""
    hub = Path(demo.state, "hub")
    os.environ["JUPYTERHUB_CRYPT_KEY"] = (hub / "crypt_key").read_text().strip()
    CryptKeeper.clear_instance()
    try:
        with sqlite3.connect(hub / "jupyterhub.sqlite") as db:
            (blob,) = db.execute(
                "SELECT encrypted_auth_state FROM users WHERE name = ?", (username,)
            ).fetchone()

        async def decrypted() -> dict:
            return await decrypt(blob)

        return asyncio.run(decrypted())
    finally:
        del os.environ["JUPYTERHUB_CRYPT_KEY"]
        CryptKeeper.clear_instance()


def test_oidc_tokens_never_reach_the_server(alice: PortalClient, demo) -> None:
    """The hub holds alice's Umbrella tokens; her server's environment has none of them."""
    state = auth_state_in_database(demo, "alice")
    assert state["access_token"] and state["proposals"] == ["ES1001", "MA1234"]
    environments = server_environments("alice")
    assert environments, "alice's server process was not found"
    for env in environments:
        assert state["access_token"].encode() not in env
        if state.get("refresh_token"):
            assert state["refresh_token"].encode() not in env
        assert state["id_token"].encode() not in env


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"datasets": ["IH2002/ID19/phantom_tomo_0001"]}, 403, "not found, or you do not have"),
        ({"datasets": ["../../etc"]}, 403, "'../../etc' was not found"),
        ({"datasets": "MA1234/ID21/xrf_map_0001; rm -rf"}, 403, "not found"),
        ({"datasets": [42]}, 400, "must be a list of dataset pids"),
        ({"image": "attacker/image"}, 400, "unknown server option(s) image"),
    ],
)
def test_forged_spawn_requests_are_refused_clearly(demo, options, status, message) -> None:
    """carol asks, through the REST API, for what she may not have; nothing starts."""
    carol = PortalClient(demo.url)
    carol.login(DEMO_USERS["carol"]["sub"])
    r = carol.api("POST", "hub/api/users/carol/server", json=options)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert carol.api("GET", "hub/api/users/carol").json()["servers"] == {}
    assert not Path(demo.state, "homes/carol/datasets/IH2002").exists()


def test_course_link_delivers_the_course_on_the_local_backend(demo) -> None:
    """carol (a trainer) follows /hub/course/nexus-basics; the notebook lands in her home."""
    carol = PortalClient(demo.url)
    carol.login(DEMO_USERS["carol"]["sub"])
    r = carol.click("/hub/course/nexus-basics", timeout=60)
    assert r.status_code == 200, r.text
    carol.wait_ready("course-nexus-basics")
    listing = carol.api("GET", "user/carol/course-nexus-basics/api/contents/courses/nexus-basics")
    assert "nexus-basics.ipynb" in {i["name"] for i in listing.json()["content"]}
    students = carol.http.get(f"{demo.url}/hub/course/nexus-basics/students", timeout=30)
    assert students.status_code == 200 and "carol" in students.text
    carol.stop("course-nexus-basics")
