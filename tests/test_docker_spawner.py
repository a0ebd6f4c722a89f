"""The dataset-mounting spawner on a real Docker engine, with images we build.

A real OIDC provider, a real hub started from portal.yaml (``panosc-portal serve``), and
containers of our base image; what is mounted is checked from inside the container.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import expect

from portal.demo.sampledata import DEMO_USERS, generate
from spawner.environments import DATA_FILE, load_environments
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, portal_containers
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider, demo_provider

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

XRF = "MA1234/ID21/xrf_map_0001"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
TOMO = "IH2002/ID19/phantom_tomo_0001"  # embargoed; alice is not a member
ESCAPE = "MA1234/ID21/escape_0001"  # a dataset folder that is a symlink out of the root
USERS = ("alice", "rita")
GHOST = {  # an environment whose image was never built
    "name": "ghost",
    "image": "panosc/ghost:0.0.0",
    "from": "base",
    "description": "An environment nobody built",
    "techniques": [],
    "server_types": ["lab"],
    "resources": {"cpu": 1, "memory": "1G"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility") / "data"
    generate(root)
    outside = root.parent / "secrets"
    outside.mkdir()
    (outside / "passwords.txt").write_text("not for users\n")
    (root / ESCAPE).symlink_to(outside, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = demo_provider(tmp_path_factory.mktemp("op"), "alice")
    # rita's membership comes only from the catalogue's proposals.yaml
    p.set_user("rita@umbrella.demo", preferred_username="rita", groups=["researchers"])
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider: Provider, data: Path, tmp_path_factory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    table = yaml.safe_load(DATA_FILE.read_text())
    table["environments"].append(GHOST)
    (folder / "environments.yaml").write_text(yaml.safe_dump(table))
    with docker_hub(
        provider,
        folder,
        data,
        images=load_environments(),  # datasets pick their technique's environment
        users=USERS,
        spawner={"processed_root": str(folder / "processed")},
        extra_config={"PortalSpawner": {"environments_file": str(folder / "environments.yaml")}},
    ) as h:
        yield h


@pytest.fixture(scope="module")
def alice(hub: Hub, provider: Provider) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(DEMO_USERS["alice"]["sub"])
    return client


def container_of(username: str, server: str):
    for c in portal_containers(engine(), username):
        if c.labels["org.panosc.portal.server"] == server:
            return c
    raise AssertionError(f"no container for {username}'s server {server!r}")


def run(container, command: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", command])
    return code, out.decode()


def test_exactly_the_two_datasets_are_mounted_read_only(alice: PortalClient) -> None:
    alice.spawn("two", {"type": "lab", "datasets": [XRF, CEO2]})
    box = container_of("alice", "two")
    _, mounts = run(box, "cat /proc/mounts")
    datasets = [line.split() for line in mounts.splitlines() if "/home/jovyan/datasets/" in line]
    readonly = sorted(m[1] for m in datasets if "ro" in m[3].split(","))
    assert readonly == [
        "/home/jovyan/datasets/ES1001/ceo2_powder_0001",
        "/home/jovyan/datasets/MA1234/xrf_map_0001",
        "/home/jovyan/datasets/datasets.json",
    ]
    assert run(box, "id -u")[1].strip() == "1000"
    code, out = run(box, "touch /home/jovyan/datasets/MA1234/xrf_map_0001/new.txt")
    assert code != 0 and "Read-only file system" in out
    code, _ = run(box, "ls /home/jovyan/datasets/MA1234/xrf_map_0001/xrf_map_0001.nxs")
    assert code == 0
    manifest = json.loads(run(box, "cat /home/jovyan/datasets/datasets.json")[1])
    assert {d["pid"]: d["path"] for d in manifest["datasets"]} == {
        CEO2: "datasets/ES1001/ceo2_powder_0001",
        XRF: "datasets/MA1234/xrf_map_0001",
    }
    code, out = run(box, "echo result > /home/jovyan/datasets/MA1234/processed/result.txt")
    assert code == 0, out  # the writable processed area
    assert json.loads(box.labels["org.panosc.portal.datasets"]) == [XRF, CEO2]
    alice.stop("two")


@pytest.mark.parametrize(
    ("pid", "message"),
    [
        (TOMO, "was not found, or you do not have access to it"),
        ("../../etc", "'../../etc' was not found"),
        (ESCAPE, "was not found"),  # a symlinked folder is never indexed
    ],
    ids=["embargoed", "traversal", "symlink-escape"],
)
def test_forged_requests_are_refused_and_nothing_is_mounted(alice, pid: str, message: str) -> None:
    r = alice.api("POST", "hub/api/users/alice/servers/forged", json={"datasets": [pid]})
    assert r.status_code == 403 and message in r.json()["message"], r.text
    servers = [c.labels["org.panosc.portal.server"] for c in portal_containers(engine(), "alice")]
    assert "forged" not in servers


def set_members(data: Path, proposal: str, members: list[str]) -> None:
    path = data / "proposals.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["proposals"][proposal]["members"] = members
    path.write_text(yaml.safe_dump(doc))


def test_revoked_membership_is_not_mounted_at_the_next_spawn(hub, provider, data) -> None:
    rita = PortalClient(hub.url)
    rita.login("rita@umbrella.demo")
    set_members(data, "ES1001", ["alice", "bob", "rita"])
    rita.spawn("", {"datasets": [CEO2]})
    listing = run(container_of("rita", ""), "ls /home/jovyan/datasets/ES1001")[1].split()
    assert listing == ["ceo2_powder_0001", "processed"]
    rita.stop()
    set_members(data, "ES1001", ["alice", "bob"])  # the facility removes rita
    r = rita.api("POST", "hub/api/users/rita/server", json={"datasets": [CEO2]})
    assert r.status_code == 403
    rita.spawn("", {"type": "lab"})  # all her datasets: the revoked one is not among them
    _, listing = run(container_of("rita", ""), "ls /home/jovyan/datasets")
    assert "ES1001" not in listing.split()
    rita.stop()


def test_lab_and_second_server_side_by_side_home_survives(alice: PortalClient) -> None:
    alice.spawn("one", {"datasets": [XRF]})
    alice.spawn("other", {"datasets": [CEO2]})
    one, other = container_of("alice", "one"), container_of("alice", "other")
    assert run(one, "echo kept > /home/jovyan/notes.txt")[0] == 0
    assert run(other, "cat /home/jovyan/notes.txt")[1].strip() == "kept"  # one home, shared
    alice.stop("one")
    servers = [c.labels["org.panosc.portal.server"] for c in portal_containers(engine(), "alice")]
    assert "one" not in servers
    other.reload()
    assert other.status == "running"
    alice.spawn("one", {"datasets": [XRF]})
    assert run(container_of("alice", "one"), "cat /home/jovyan/notes.txt")[1].strip() == "kept"
    alice.stop("one")
    alice.stop("other")


def test_servers_stay_reachable_across_a_hub_restart(hub: Hub, alice: PortalClient) -> None:
    alice.spawn("steady", {"datasets": [XRF]})
    assert alice.api("GET", "user/alice/steady/api/status").status_code == 200
    hub.stop()
    assert container_of("alice", "steady").status == "running"
    hub.start()
    deadline = time.monotonic() + 30
    while alice.api("GET", "user/alice/steady/api/status").status_code != 200:
        assert time.monotonic() < deadline, "server not reachable after the hub restarted"
        time.sleep(0.5)
    listing = alice.api("GET", "user/alice/steady/api/contents/datasets/MA1234").json()
    assert sorted(i["name"] for i in listing["content"]) == ["processed", "xrf_map_0001"]
    alice.stop("steady")


def test_a_default_spawn_skips_an_unsafe_dataset_but_mounts_the_rest(alice) -> None:
    """alice's proposal lists a dataset whose folder escapes the storage root."""
    alice.spawn("everything", {"type": "lab"})
    _, listing = run(container_of("alice", "everything"), "ls /home/jovyan/datasets/MA1234")
    assert sorted(listing.split()) == [
        "cu_foil_xas_0001",
        "nexus_tour_0001",
        "processed",
        "xrf_map_0001",
    ]
    alice.stop("everything")


def test_missing_image_is_a_clear_error(alice: PortalClient) -> None:
    r = alice.api("POST", "hub/api/users/alice/servers/ghostly", json={"environment": "ghost"})
    assert r.status_code == 503
    assert "needs the image panosc/ghost:0.0.0, which is not on this Docker host" in r.text
    assert "panosc-portal images build ghost" in r.json()["message"]


@pytest.mark.browser
def test_open_link_lands_in_the_dataset_folder(browser, hub: Hub, artifacts: Path) -> None:
    """The catalogue's "open in portal" link, followed in a real browser."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/open?dataset={XRF}")
    page.get_by_text("Sign in with Umbrella").click()
    page.fill("input[name=sub]", DEMO_USERS["alice"]["sub"])  # typed, as on a login page
    page.get_by_role("button", name="Authorize").click()
    # The catalogue is another site: the portal shows what will start, and a Start button.
    expect(page.get_by_text("Start JupyterLab with the dataset")).to_be_visible()
    page.screenshot(path=artifacts / "06-open-link-confirm.png")
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_url("**/user/alice/lab-xrf-map-0001/lab/tree/datasets/MA1234/xrf_map_0001**")
    listing = page.locator(".jp-DirListing-item", has_text="xrf_map_0001.nxs")
    listing.wait_for(timeout=120_000)
    page.wait_for_timeout(5000)  # JupyterLab would ask about news a few seconds in
    page.screenshot(path=artifacts / "06-open-link-docker.png")
    expect(page.locator(".Toastify__toast")).to_have_count(0)  # the image's overrides.json
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    box = container_of("alice", "lab-xrf-map-0001")
    assert box.labels["org.panosc.portal.environment"] == "xrf"  # chosen by technique
    page.close()
    alice = PortalClient(hub.url)
    alice.login(DEMO_USERS["alice"]["sub"])
    alice.stop("lab-xrf-map-0001")
