"""Attacks on what a server mounts and reaches, against a real hub, OIDC provider and Docker.

Findings 1 and 3 of the security review: a processed area handed to a non-member because
they mounted the proposal's open data, and a symlinked dataset folder (or a folder swapped
after the access check) smuggling another proposal's embargoed data into a mount. And the
Docker host's isolation: from alice's container, bob's server and the host's services
other than the hub's API must be out of reach, and a process bomb must stop at the limit.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docker.types import Mount as DockerMount

from portal.catalogue import Dataset
from portal.demo.sampledata import DEMO_USERS, generate
from spawner.docker import GATE, bridge_gateway, check_mounted, gated, identity_command
from spawner.environments import load_environments
from spawner.mounts import MountError, StorageRoot, plan_mounts, verify_mount
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, ensure_images, portal_containers
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

TOUR = "MA1234/ID21/nexus_tour_0001"  # MA1234's open data; bob is not a member of MA1234
XRF = "MA1234/ID21/xrf_map_0001"
TOMO = "IH2002/ID19/phantom_tomo_0001"  # embargoed; alice is not a member of IH2002
STEAL = "MA1234/ID21/steal"  # alice's symlink to IH2002's tomography, inside MA1234's tree
USERS = ("alice", "bob", "rita")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility") / "data"
    generate(root)
    # A member of MA1234 who can write in its tree links IH2002's dataset into it.
    os.symlink("../../IH2002/ID19/phantom_tomo_0001", root / STEAL)
    # rita is a member of MA1234 by the catalogue's member list only (no identity claim).
    text = (root / "proposals.yaml").read_text()
    (root / "proposals.yaml").write_text(text.replace("members: [alice]", "members: [alice, rita]"))
    return root


@pytest.fixture(scope="module")
def hub(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    provider = demo_provider(tmp_path_factory.mktemp("op"), "alice", "bob")
    provider.set_user("rita@umbrella.demo", preferred_username="rita", groups=["researchers"])
    folder = tmp_path_factory.mktemp("hub")
    processed = {"processed_root": str(folder / "processed")}
    try:
        with docker_hub(
            provider, folder, data, images=("base", "xrf"), users=USERS, spawner=processed
        ) as h:
            yield h
    finally:
        provider.stop()


def login(hub: Hub, sub: str) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(sub)
    return client


def in_server(username: str, server: str, command: str) -> tuple[int, str]:
    (box,) = [
        c
        for c in portal_containers(engine(), username)
        if c.labels["org.panosc.portal.server"] == server
    ]
    code, out = box.exec_run(["sh", "-c", command])
    return code, out.decode()


def test_open_data_gives_a_non_member_no_processed_area(hub: Hub) -> None:
    bob = login(hub, DEMO_USERS["bob"]["sub"])
    bob.spawn("tour", {"type": "lab", "datasets": [TOUR]})
    code, listing = in_server("bob", "tour", "ls /home/jovyan/datasets/MA1234")
    assert code == 0 and listing.split() == ["nexus_tour_0001"], listing
    code, out = in_server("bob", "tour", "grep ' /home/jovyan/datasets/' /proc/mounts")
    assert " rw," not in out.replace("tmpfs /home/jovyan/datasets tmpfs rw", ""), out
    bob.stop("tour")


def test_members_get_their_processed_area_by_claim_or_member_list(hub: Hub) -> None:
    alice = login(hub, DEMO_USERS["alice"]["sub"])  # MA1234 in her proposals claim
    alice.spawn("tour", {"type": "lab", "datasets": [TOUR]})
    code, out = in_server("alice", "tour", "touch /home/jovyan/datasets/MA1234/processed/r.txt")
    assert code == 0, out
    alice.stop("tour")
    rita = login(hub, "rita@umbrella.demo")  # MA1234 only in proposals.yaml's member list
    rita.spawn("tour", {"type": "lab", "datasets": [TOUR]})
    code, out = in_server("rita", "tour", "ls /home/jovyan/datasets/MA1234/processed")
    assert code == 0 and "r.txt" in out, out  # the proposal's one shared area
    rita.stop("tour")


def test_a_symlinked_dataset_folder_is_neither_catalogued_nor_mounted(hub: Hub) -> None:
    alice = login(hub, DEMO_USERS["alice"]["sub"])
    page = alice.http.get(f"{hub.url}/hub/datasets", params={"q": "tomo"}, timeout=30)
    assert page.status_code == 200 and "steal" not in page.text and "phantom" not in page.text
    r = alice.api("POST", "hub/api/users/alice/servers/steal", json={"datasets": [STEAL]})
    assert r.status_code == 403 and "not found" in r.text, r.text
    alice.spawn("all", {"type": "lab", "environment": "base"})  # all she may read
    manifest = json.loads(in_server("alice", "all", "cat /home/jovyan/datasets/datasets.json")[1])
    pids = {d["pid"] for d in manifest["datasets"]}
    assert XRF in pids and STEAL not in pids and TOMO not in pids
    code, _ = in_server("alice", "all", "ls -R /home/jovyan/datasets | grep -q tomo")
    assert code != 0
    alice.stop("all")


def swap(folder: Path, replacement: Path) -> None:
    """An attacker's rename race: the checked folder moves away, another takes its name."""
    folder.rename(folder.with_name(folder.name + ".old"))
    replacement.rename(folder)


def test_a_folder_swapped_after_the_check_is_refused_before_and_after_the_bind(
    tmp_path: Path,
) -> None:
    ensure_images("base")
    storage = tmp_path / "storage"
    (storage / "ma1234/id21/scan1").mkdir(parents=True)
    (storage / "ma1234/id21/scan1/mine.txt").write_text("alice's data\n")
    (storage / "ih2002/id19/tomo").mkdir(parents=True)
    (storage / "ih2002/id19/tomo/secret.txt").write_text("embargoed\n")
    dataset = Dataset("p1", "scan", "MA1234", "ID21", "/data/ma1234/id21/scan1")
    plan = plan_mounts([dataset], [StorageRoot("/data", str(storage))])
    (mount,) = plan.dataset_mounts
    verify_mount(mount)  # unchanged: accepted

    swap(storage / "ma1234/id21/scan1", storage / "ih2002/id19/tomo")
    with pytest.raises(MountError, match="replaced between the access check and the mount"):
        verify_mount(mount)

    # What Docker binds is the path: after the swap the container sees the other folder,
    # and the check run inside it (the spawner's own command and parser) refuses it.
    box = engine().containers.run(
        load_environments()["base"].image,
        ["sleep", "60"],
        detach=True,
        remove=True,
        user="1000:100",
        mounts=[_bind(mount.source, "/home/jovyan/" + str(mount.target))],
    )
    try:
        code, out = box.exec_run(identity_command(plan), demux=True)
        assert b"secret.txt" in box.exec_run(["ls", "/home/jovyan/" + str(mount.target)])[1]
        with pytest.raises(MountError, match="replaced between the access check"):
            check_mounted(plan, code, out[0] or b"", out[1] or b"")
    finally:
        box.remove(force=True)


def _bind(source: Path, target: str) -> DockerMount:
    return DockerMount(target, str(source), type="bind", read_only=True)


def test_nothing_of_the_user_runs_before_the_mounts_are_verified() -> None:
    """The container waits at the hub's gate: a user's startup code (in their persistent
    home) cannot copy a swapped-in folder in the moment before the check."""
    ensure_images("base")
    box = engine().containers.run(
        load_environments()["base"].image,
        gated(["sh", "-c", "touch /tmp/user-code-ran; sleep 60"]),
        detach=True,
        remove=True,
        user="1000:100",
    )
    try:
        time.sleep(1.5)
        assert box.exec_run(["test", "-e", "/tmp/user-code-ran"])[0] != 0
        assert box.exec_run(["touch", GATE])[0] == 0  # what the hub does once verified
        deadline = time.monotonic() + 10
        while box.exec_run(["test", "-e", "/tmp/user-code-ran"])[0] != 0:
            assert time.monotonic() < deadline, "the gate did not open"
            time.sleep(0.1)
    finally:
        box.remove(force=True)


def reach(username: str, server: str, host: str, port: int) -> str:
    """From inside the server: 'connected', or why not."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(type(e).__name__)"
    )
    _code, out = in_server(username, server, f'python3 -c "{probe}" {host} {port}')
    return out.strip()


def test_servers_reach_neither_each_other_nor_the_host_but_the_hub_api(hub: Hub) -> None:
    alice, bob = login(hub, DEMO_USERS["alice"]["sub"]), login(hub, DEMO_USERS["bob"]["sub"])
    alice.spawn("net", {"type": "lab", "datasets": []})
    bob.spawn("net", {"type": "lab", "datasets": []})
    [victim] = [c for c in portal_containers(engine(), "bob") if c.name.endswith("net")]
    networks = victim.attrs["NetworkSettings"]["Networks"]
    assert list(networks) == ["panosc-users"]
    bob_ip = networks["panosc-users"]["IPAddress"]
    gateway = bridge_gateway()
    api_port = hub.config["spawner"]["docker"]["hub_api_port"]
    with socket.create_server((gateway, 0)) as service:  # a host service on the bridge
        service_port = service.getsockname()[1]
        assert reach("bob", "net", "127.0.0.1", 8888) == "connected"  # bob's server is up
        assert reach("alice", "net", gateway, api_port) == "connected"  # the hub API: allowed
        assert reach("alice", "net", bob_ip, 8888) != "connected"  # bob's server
        assert reach("alice", "net", gateway, service_port) != "connected"
        assert reach("alice", "net", "172.17.0.1", service_port) != "connected"
    alice.stop("net")
    bob.stop("net")


def test_a_process_bomb_stops_at_the_containers_limit(hub: Hub) -> None:
    alice = login(hub, DEMO_USERS["alice"]["sub"])
    alice.spawn("bomb", {"type": "lab", "datasets": []})
    [box] = [c for c in portal_containers(engine(), "alice") if c.name.endswith("bomb")]
    assert box.attrs["HostConfig"]["PidsLimit"] == 1024
    _code, out = in_server(
        "alice", "bomb", "for i in $(seq 1100); do sleep 30 & done 2>&1 | tail -1; echo done"
    )
    assert "Cannot fork" in out, out  # the shell hit the limit; the host did not
    alice.stop("bomb")
