"""The Slurm backend on a real Slurm cluster: munged, slurmctld and two compute nodes, each
a network namespace with its own address and hostname (:mod:`tests.support.slurm`).

The hub runs outside the nodes and reaches each server at its node's address, as on a
real cluster; the users log in through the real OIDC provider; the environment is the
base image, unpacked by ``panosc-portal images export`` as a site would.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from portal.demo.sampledata import DEMO_USERS, generate
from portal.image_export import export
from portal.settings import SettingsError, parse
from spawner.environments import UNPACKED_FILE, load_environments
from spawner.form import form_context, render_form
from spawner.provenance import read_records
from spawner.provenance_record import CRATE_FILE
from spawner.slurm import JobOptions, job_script, node_program
from tests.support.accessibility import assert_accessible
from tests.support.docker_support import engine
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.slurm import SlurmCluster
from tests.support.umbrella import Hub, Provider, demo_provider

pytestmark = pytest.mark.slurm

XRF = "MA1234/ID21/xrf_map_0001"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
EMBARGOED = "IH0042/BM31/ptni_catalyst_0001"  # in-house: alice is no member
#: Shared storage of the site: world-traversable, as the nodes' users must reach their homes.
SITE = Path("/var/tmp/panosc-slurm-tests")
ENVIRONMENTS = Path("/var/tmp/panosc-environments")


@pytest.fixture(scope="module")
def site() -> Path:
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.mkdir(parents=True)
    SITE.chmod(0o755)
    return SITE  # left for its logs after the run; the next run starts afresh


@pytest.fixture(scope="module")
def cluster(site: Path) -> Iterator[SlurmCluster]:
    c = SlurmCluster(site / "cluster").start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def environments() -> Path:
    """The base and desktop environments unpacked as a site does it (reused while the
    images are the same)."""
    export = ["images", "export", "--to", str(ENVIRONMENTS), "base", "desktop"]
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", *export],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return ENVIRONMENTS


@pytest.fixture(scope="module")
def data(site: Path) -> Path:
    root = site / "data"
    generate(root)
    return root


@pytest.fixture(scope="module")
def provider(site: Path) -> Iterator[Provider]:
    p = demo_provider(site, "alice", "bob")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider, cluster, environments, data, site) -> Iterator[Hub]:
    folder = site / "hub"
    folder.mkdir(mode=0o700)
    config = {
        "auth": {
            "issuer": provider.issuer,
            "client_id": "portal-slurm-tests",
            "client_secret": "s",
            "allowed_groups": ["researchers"],
        },
        "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
        "spawner": {
            "backend": "slurm",
            "audit_interval": 3,  # the hub polls the jobs every 3 s
            "processed_root": str(site / "processed"),
            "slurm": {
                "hub_connect_ip": cluster.controller_ip,
                "hub_api_port": free_port(),
                "partitions": {
                    "short": {"max_minutes": 60, "max_cpus": 2, "max_memory": "8G"},
                    "long": {"max_minutes": 600, "max_cpus": 2, "max_memory": "8G"},
                },
                "default_partition": "short",
                "default_walltime": 30,
                "slurm_conf": str(cluster.conf),
                "environments_dir": str(environments),
                "home_dir": str(site / "homes" / "{username}"),
            },
        },
    }
    h = Hub(config, folder)
    h.start()
    yield h
    h.stop()


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(DEMO_USERS["alice"]["sub"])
    return client


def jobs(cluster: SlurmCluster, user: str = "panosc-alice") -> list[str]:
    """The user's jobs that have not ended."""
    out = cluster.slurm("squeue", "-h", "-u", user, "-o", "%i %T")
    return [line for line in out.splitlines() if line.strip()]


def progress(client: PortalClient, server: str, until: str, timeout: float = 120) -> list[str]:
    """The spawn's progress messages, read from the hub's event stream until one contains
    ``until`` (or the spawn ends)."""
    url = f"{client.hub_url}/hub/api/users/{client.username()}/servers/{server}/progress"
    headers = {"Authorization": f"token {client.api_token()}"}
    messages: list[str] = []
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                messages.append(event.get("message", ""))
                if until in messages[-1] or event.get("ready") or event.get("failed"):
                    break
    return messages


def home_page(client: PortalClient) -> str:
    return client.click("/hub/home").text


def until_no_jobs(cluster: SlurmCluster, timeout: float = 30) -> list[str]:
    """The user's jobs once Slurm has ended them all (or what is left after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while jobs(cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    return jobs(cluster)


def record_of(site: Path, proposal: str, server: str):
    """The provenance record of alice's server ``server``, read on the host."""
    [record] = [r for r in read_records(site / "processed" / proposal) if r.server_name == server]
    return record


# -- refusals: nothing reaches the cluster -------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("options", "status", "words"),
    [
        ({"partition": "gpu"}, 400, "unknown partition 'gpu'; choose one of long, short"),
        ({"walltime": "61"}, 400, "from 1 to 60"),
        ({"partition": "long", "walltime": "601"}, 400, "from 1 to 600"),
        ({"walltime": "30\n#SBATCH --uid=0"}, 400, "whole number of minutes"),
        ({"walltime": ["10", "20"]}, 400, "single string"),
        ({"cmd": "cat /etc/shadow"}, 400, "unknown server option(s) cmd"),
        ({"prologue": "id"}, 400, "unknown server option(s) prologue"),
        ({"datasets": [EMBARGOED]}, 403, EMBARGOED),
        ({"resources": "large"}, 400, "do not fit partition short"),
    ],
)
def test_forged_job_options_are_refused_before_anything_is_submitted(
    alice: PortalClient, cluster: SlurmCluster, options: dict, status: int, words: str
) -> None:
    r = alice.api("POST", "hub/api/users/alice/servers/forged", json={"type": "lab", **options})
    assert r.status_code == status, r.text
    assert words in r.json()["message"]
    assert jobs(cluster) == []


# -- a session on a compute node -----------------------------------------------------------


@pytest.fixture(scope="module")
def session(alice: PortalClient, cluster: SlurmCluster) -> Iterator[str]:
    alice.spawn("lab", {"type": "lab", "environment": "base", "datasets": [XRF, CEO2]}, 180)
    yield "lab"
    if "lab" in alice.api("GET", "hub/api/users/alice").json()["servers"]:
        alice.stop("lab")


@pytest.mark.e2e
def test_the_session_runs_on_a_compute_node_as_the_user_in_jupyterlab(
    alice: PortalClient, session: str, cluster: SlurmCluster, hub: Hub
) -> None:
    [job] = jobs(cluster)
    assert job.endswith("RUNNING")
    r = alice.click(f"/user/alice/{session}/lab")
    assert r.status_code == 200 and "JupyterLab" in r.text  # through the proxy, to the node
    out = alice.run_python(
        "import os, socket\nprint(socket.gethostname(), os.getuid(), os.getgid())", session
    )
    host, uid, gid = out.split()
    account = pwd.getpwnam("panosc-alice")
    assert host in ("node1", "node2")  # a compute node, not the hub's host
    assert (int(uid), int(gid)) == (account.pw_uid, account.pw_gid)


INSPECT = """
import json, os, sys
home = os.path.expanduser("~")
top = home + "/datasets"
mounted = sorted(p + "/" + d for p in os.listdir(top) if os.path.isdir(top + "/" + p)
                 for d in os.listdir(top + "/" + p))
manifest = json.load(open(top + "/datasets.json"))["datasets"]
hidden = {path: os.path.exists(path) for path in json.loads(sys.argv[1])}
try:
    open(top + "/" + mounted[0] + "/planted.txt", "w")
    write = "written"
except OSError as e:
    write = e.errno
print(json.dumps([mounted, sorted(d["pid"] for d in manifest), hidden, write]))
"""


@pytest.mark.e2e
def test_inside_the_job_only_the_two_approved_datasets_are_visible_read_only(
    alice: PortalClient, session: str, data: Path, site: Path, hub: Hub, cluster: SlurmCluster
) -> None:
    secret = [data, data / "IH0042", site / "homes" / "bob", hub.folder, cluster.folder]
    argv = json.dumps([*map(str, secret), "/etc/munge/munge.key"])
    code = f"import sys\nsys.argv = ['inspect', {argv!r}]\n{INSPECT}"
    mounted, manifest, hidden, write = json.loads(alice.run_python(code, session))
    assert manifest == sorted([XRF, CEO2])
    # the two datasets, and the processed areas of the two proposals alice is a member of
    assert mounted == [
        "ES1001/ceo2_powder_0001",
        "ES1001/processed",
        "MA1234/processed",
        "MA1234/xrf_map_0001",
    ]
    assert not any(hidden.values()), hidden  # the data tree, bob's home, the hub, Slurm
    assert write == 30  # EROFS: the dataset is read-only


NODE_PYTHON = "/usr/bin/python3"  # the node's own, which any account may run
REACH = """
import json, socket, sys, threading
def reaches(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return True
    except OSError:
        return False
mine = socket.socket()
mine.bind(("127.0.0.1", 0))
mine.listen()
threading.Thread(target=lambda: [mine.accept() for _ in range(9)], daemon=True).start()
print(json.dumps({
    "mine": mine.getsockname()[1],
    "theirs": reaches("127.0.0.1", int(sys.argv[1])),
    "node": reaches(sys.argv[2], int(sys.argv[3])),
}))
"""


@pytest.mark.e2e
def test_another_user_on_the_node_and_the_session_cannot_reach_each_other(
    alice: PortalClient, session: str, cluster: SlurmCluster
) -> None:
    """Every job on a node would share the node's network, loopback included: another
    user's code could then connect to whatever a session serves on 127.0.0.1 (a Dask
    scheduler, a file server, a kernel's ports), and take the server's port before it
    binds. The sandbox has a network of its own; only the node program's bridges cross."""
    node = alice.run_python("import socket; print(socket.gethostname())", session).strip()
    n = cluster.names().index(node) + 1
    netns = ["ip", "netns", "exec", cluster.netns(n)]
    theirs = free_port()  # another user's service on the node's loopback
    service = subprocess.Popen(
        [*netns, "runuser", "-u", "nobody", "--", NODE_PYTHON, "-m", "http.server",
         "--bind", "127.0.0.1", str(theirs)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1)
        slurmd = 10001 + 10 * cluster.net
        argv = [str(theirs), cluster.node_ip(n), str(slurmd)]
        code = f"import sys\nsys.argv = ['reach', *{argv!r}]\n{REACH}"
        seen = json.loads(alice.run_python(code, session))
        assert seen["theirs"] is False  # the other user's service, from the session
        assert seen["node"] is False  # the node's own address (slurmd), from the session
        connect = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3)"
        probe = [*netns, "runuser", "-u", "nobody", "--", NODE_PYTHON, "-c", connect]
        back = subprocess.run([*probe, str(seen["mine"])], capture_output=True)
        assert back.returncode != 0  # the reverse: the session's service, from the node
        # while the same probe does reach the other user's service on the node's loopback
        assert subprocess.run([*probe, str(theirs)], capture_output=True).returncode == 0
    finally:
        service.terminate()
        service.wait()


@pytest.mark.e2e
def test_other_cluster_accounts_cannot_enter_the_processed_areas(
    alice: PortalClient, session: str, site: Path
) -> None:
    """Jobs open the processed areas as their users, so the root is open to the portal's
    accounts: but not to the cluster's other users, who can log in to the nodes."""
    written = alice.run_python(
        "import os; p = os.path.expanduser('~/datasets/MA1234/processed/mine.txt');"
        " open(p, 'w').write('x'); print('ok')",
        session,
    )
    assert written.strip() == "ok"
    area = site / "processed" / "MA1234"
    assert (area / "mine.txt").exists()
    outsider = subprocess.run(
        ["runuser", "-u", "nobody", "--", "ls", str(area)], capture_output=True, text=True
    )
    assert outsider.returncode != 0 and "Permission denied" in outsider.stderr


@pytest.mark.e2e
def test_the_job_token_sets_a_port_and_nothing_else(alice: PortalClient, session: str) -> None:
    """User code holds its server's token: batchspawner's handler would let it set any
    attribute of the spawner (exec_prefix, batch_script...); the portal's takes a port,
    once, while the server starts."""
    code = """
import json, os, urllib.request, urllib.error
def post(body):
    r = urllib.request.Request(os.environ["JUPYTERHUB_API_URL"] + "/batchspawner",
        data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
    try:
        return urllib.request.urlopen(r, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code
print(post({"exec_prefix": "", "batch_script": "#!/bin/sh\\nid"}), post({"port": 2222}))
"""
    assert alice.run_python(code, session).split() == ["400", "409"]


@pytest.mark.e2e
def test_the_home_page_shows_the_jobs_time_limit(alice: PortalClient, session: str) -> None:
    page = home_page(alice)
    row = page.split('data-server-name="lab"')[1].split(">")[0]
    end = float(row.split('data-job-end="')[1].split('"')[0])
    assert 25 * 60 < end - time.time() <= 30 * 60  # default_walltime: 30 minutes


@pytest.mark.e2e
def test_a_hub_restart_finds_the_running_job_and_stop_cancels_it(
    alice: PortalClient, session: str, hub: Hub, cluster: SlurmCluster, site: Path
) -> None:
    [before] = jobs(cluster)
    assert record_of(site, "ES1001", session).stopped is None
    hub.stop()
    hub.start()
    assert alice.wait_ready(session)["ready"]
    assert alice.run_python("print(6 * 7)", session).strip() == "42"
    assert jobs(cluster) == [before]
    alice.stop(session)
    assert until_no_jobs(cluster) == []
    # the restarted hub still completes the record the first one started
    assert record_of(site, "ES1001", session).stopped is not None


PLANT = """
import os
os.symlink("/etc/passwd", "passwd.py")
os.symlink("/etc", "etc-link")
with open("datasets/ES1001/processed/reduce.py", "w") as f:
    f.write("print(2)\\n")
print(open("analysis.ipynb", "rb").read().hex())
"""


@pytest.mark.e2e
def test_a_session_is_recorded_by_the_user_in_a_step_of_its_job(
    alice: PortalClient, cluster: SlurmCluster, environments: Path, site: Path
) -> None:
    """The record is written on the node as alice's account, in a sandbox of its own in her
    job; at stop it lists what she saved, and a link she planted out of the home is neither
    followed nor hashed."""
    before = time.time()
    alice.spawn("prov", {"type": "lab", "environment": "base", "datasets": [XRF, CEO2]}, 180)
    try:
        after = time.time()
        record = record_of(site, "ES1001", "prov")  # alice's first mounted proposal, sorted
        assert {pid for pid, _ in record.datasets} == {XRF, CEO2}
        assert all(title for _, title in record.datasets)
        exported = json.loads((environments / "base" / UNPACKED_FILE).read_text())
        assert (record.image, record.digest) == (exported["image"], exported["id"])
        assert record.environment == "base" and record.server_type == "lab"
        assert record.user == "alice" and record.stopped is None
        started = time.mktime(time.strptime(record.started, "%Y-%m-%dT%H:%M:%SZ"))
        assert int(before) <= started - time.timezone <= after
        owner = (record.path / CRATE_FILE).stat().st_uid
        assert owner == pwd.getpwnam("panosc-alice").pw_uid  # written by alice, not the hub
        notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        r = alice.api(
            "PUT",
            "user/alice/prov/api/contents/analysis.ipynb",
            json={"type": "notebook", "format": "json", "content": notebook},
        )
        assert r.status_code in (200, 201), r.text
        saved = bytes.fromhex(alice.run_python(PLANT, "prov").strip())
    finally:
        alice.stop("prov")
    assert until_no_jobs(cluster) == []
    record = record_of(site, "ES1001", "prov")
    assert record.stopped is not None and record.stopped >= record.started
    assert dict(record.files) == {
        "analysis.ipynb": hashlib.sha256(saved).hexdigest(),
        "datasets/ES1001/processed/reduce.py": hashlib.sha256(b"print(2)\n").hexdigest(),
    }


async def vnc_banner(client: PortalClient, server: str) -> bytes:
    """The first bytes of the desktop's VNC stream, through the proxy and websockify, as
    the browser's noVNC reads them."""
    url = f"{client.hub_url.replace('http', 'ws', 1)}/user/alice/{server}/desktop-websockify/"
    headers = {"Authorization": f"token {client.api_token()}"}
    ws = await websocket_connect(
        HTTPRequest(url, headers=headers, connect_timeout=60), subprotocols=["binary"]
    )
    try:
        return await asyncio.wait_for(ws.read_message(), 60)
    finally:
        ws.close()


@pytest.mark.e2e
def test_a_remote_desktop_runs_in_the_job_and_its_vnc_listens_on_no_port(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    """The node's network is shared by every job on it: the desktop's VNC server must be
    reachable through the user's own server only, never on a port of the node."""
    alice.spawn("desk", {"type": "desktop", "environment": "desktop"}, 240)
    try:
        assert alice.click("/user/alice/desk/desktop/").status_code == 200
        assert asyncio.run(vnc_banner(alice, "desk")).startswith(b"RFB 003.")
        code = "print(open('/proc/net/tcp').read() + open('/proc/net/tcp6').read())"
        table = alice.run_python(code, "desk").splitlines()
        listening = {
            int(line.split()[1].rsplit(":", 1)[1], 16)
            for line in table
            if len(line.split()) > 3 and line.split()[3] == "0A"
        }
        assert not listening & {5900, 5901, 5902, 6080}, listening
    finally:
        alice.stop("desk")


# -- the queue and the ends of a job -------------------------------------------------------


def wait_home_says(client: PortalClient, words: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    page = ""
    while time.monotonic() < deadline:
        page = home_page(client)
        if words in page:
            return page
        time.sleep(1)
    raise AssertionError(f"the home page never said {words!r}: {page[-2000:]}")


@pytest.mark.e2e
def test_a_full_cluster_queues_the_spawn_with_its_reason_and_position(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    blockers = [
        cluster.slurm(
            "sbatch", "--parsable", "-w", node, "-c", "2", "-o", "/dev/null", "--wrap", "sleep 600"
        )
        for node in cluster.names()
    ]
    try:
        r = alice.api("POST", "hub/api/users/alice/servers/queued", json={"environment": "base"})
        assert r.status_code == 202, r.text
        said = progress(alice, "queued", "Resources")
        assert said[-1].startswith("Queued on the cluster (job "), said
        assert said[-1].endswith(": Resources, position 1 in the queue)"), said
        cluster.slurm("scancel", blockers[0].strip())
        state = alice.wait_ready("queued", timeout=120)
        assert state["ready"]
    finally:
        cluster.slurm("scancel", *[b.strip() for b in blockers], check=False)
    alice.stop("queued")


@pytest.mark.e2e
def test_a_hub_restart_while_a_job_waits_cancels_it_and_says_so(
    alice: PortalClient, cluster: SlurmCluster, hub: Hub
) -> None:
    """Nobody follows a queued start across a restart: its job must not run on unseen."""
    blockers = [
        cluster.slurm("sbatch", "--parsable", "-w", node, "-c", "2", "-o", "/dev/null",
                      "--wrap", "sleep 600").strip()
        for node in cluster.names()
    ]  # fmt: skip
    try:
        r = alice.api("POST", "hub/api/users/alice/servers/waiting", json={"environment": "base"})
        assert r.status_code == 202, r.text
        progress(alice, "waiting", "Resources")
        [queued] = jobs(cluster)
        assert queued.endswith("PENDING")
        hub.stop()
        hub.start()
        wait_home_says(alice, "Your session waiting did not start: the portal restarted")
        assert until_no_jobs(cluster) == []
    finally:
        cluster.slurm("scancel", *blockers, check=False)


@pytest.mark.e2e
def test_a_job_cancelled_on_the_cluster_ends_with_a_clear_message(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    alice.spawn("cancelled", {"environment": "base"}, 180)
    [job] = jobs(cluster)
    cluster.slurm("scancel", job.split()[0])
    wait_home_says(alice, "Your session cancelled ended: the job was cancelled on the cluster")
    assert (
        "cancelled" not in alice.api("GET", "hub/api/users/alice").json()["servers"]
        or not (alice.api("GET", "hub/api/users/alice").json()["servers"]["cancelled"]["pending"])
    )


@pytest.mark.e2e
def test_a_job_at_its_time_limit_ends_with_a_clear_message(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    """The user asked for one minute: Slurm ends the job (it checks limits every ~30 s)."""
    alice.spawn("short", {"environment": "base", "walltime": "1"}, 180)
    wait_home_says(alice, "Your session short ended: the job reached its time limit", timeout=180)
    assert until_no_jobs(cluster) == []


@pytest.mark.e2e
def test_a_node_taken_down_ends_the_session_with_a_clear_message(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    alice.spawn("lost", {"environment": "base"}, 180)
    node = cluster.slurm("squeue", "-h", "-u", "panosc-alice", "-o", "%N").strip()
    cluster.slurm("scontrol", "update", f"nodename={node}", "state=down", "reason=test")
    try:
        wait_home_says(alice, "Your session lost ended: the compute node running it failed")
    finally:
        cluster.slurm("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    assert jobs(cluster) == []


@pytest.mark.e2e
def test_an_environment_not_unpacked_is_refused_with_the_command_that_fixes_it(
    alice: PortalClient, cluster: SlurmCluster
) -> None:
    r = alice.api("POST", "hub/api/users/alice/servers/xrf", json={"environment": "xrf"})
    assert r.status_code == 503
    assert "panosc-portal images export --to" in r.json()["message"]
    assert jobs(cluster) == []


def test_the_node_program_imports_only_the_standard_library() -> None:
    """It runs with the node's own python3, isolated (-I -S: no site-packages), before any
    of the user's code: its modules must load there with nothing but the standard library."""
    from spawner.slurm import node_modules

    check = node_modules() + "\nprint(sys.modules['spawner.slurm_job'].main.__name__)"
    done = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", check], capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["main"]


# -- configuration and the job script, without a cluster ------------------------------------

BASE_YAML = """
auth: {issuer: "https://auth.example.eu/realms/f", client_id: portal, allowed_groups: [users]}
catalogue: {backend: local, local: {data_root: /tmp}}
"""


def readme_slurm_yaml() -> str:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("## Deploy on a Slurm cluster")[1].split("\n## ")[0]
    return section.split("```yaml\n")[1].split("```")[0]


def test_the_readmes_slurm_configuration_is_valid_as_pasted() -> None:
    settings = parse(BASE_YAML + readme_slurm_yaml())
    assert settings.spawner.backend == "slurm"
    assert settings.spawner.slurm.default_partition == "interactive"


@pytest.mark.parametrize(
    ("spawner", "words"),
    [
        ("{backend: slurm}", "backend 'slurm' needs a 'slurm:' section"),
        (
            "{backend: slurm, slurm: {hub_connect_ip: 10.0.0.5, partitions: {a: {max_minutes: 9}},"
            ' extra_sbatch: ["#SBATCH --qos=x\\nrm -rf /"]}}',
            "must be one '#SBATCH --option' line",
        ),
        (
            "{backend: slurm, slurm: {hub_connect_ip: 10.0.0.5, partitions: {a: {max_minutes: 9}},"
            " default_partition: b}}",
            "default_partition 'b' is not one of the partitions (a)",
        ),
        (
            "{backend: slurm, slurm: {hub_connect_ip: 10.0.0.5, partitions: {}}}",
            "slurm.partitions",
        ),
    ],
)
def test_a_bad_slurm_section_is_refused_naming_the_field(spawner: str, words: str) -> None:
    with pytest.raises(SettingsError) as refused:
        parse(BASE_YAML + f"spawner: {spawner}\n")
    assert words in str(refused.value)


def test_nothing_a_catalogue_or_user_wrote_reaches_the_job_scripts_shell() -> None:
    """The plan carries dataset titles from the catalogue; the script hands the node
    program to Python in a quoted here-document (no expansion), the plan as base64."""
    title = "O'Brien's powder'; rm -rf ~; echo '$(id)`id`\nPANOSC-PORTAL-END-OF-PROGRAM"
    plan = {"manifest": json.dumps({"datasets": [{"title": title}]}), "mounts": []}
    script = job_script(
        name="portal-panosc-alice-default",
        job=JobOptions("short", 30),
        cpus=1,
        memory=2048,
        account="",
        output="/home/x/.panosc-portal-job.log",
        extra=["#SBATCH --qos=portal"],
        python="/usr/bin/python3",
        plan=plan,
    )
    header, _, rest = script.partition("\nexec ")
    directives = header.splitlines()
    assert all(line.startswith("#") for line in directives)
    command, *program, end, tail = rest.split("\n")
    assert command == "/usr/bin/python3 -I -S - <<'PANOSC-PORTAL-END-OF-PROGRAM'"
    assert end == "PANOSC-PORTAL-END-OF-PROGRAM" and tail == ""
    assert "PANOSC-PORTAL-END-OF-PROGRAM" not in "\n".join(program)
    assert title not in script and "$(id)" not in script
    assert "#SBATCH --time=30" in directives and "#SBATCH --qos=portal" in directives


def test_a_node_that_knows_the_account_by_another_uid_runs_nothing() -> None:
    """The hub makes the accounts; a node whose directory gives another name or uid (or
    an account the portal did not make) must not run the job as whoever that is."""
    plan = {"env": {"USER": "panosc-alice"}, "uid": 4242, "comment": "x", "report_port": True}
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-"], input=node_program(plan), capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not as the portal's account panosc-alice (uid 4242)" in done.stderr


def test_the_spawn_form_offers_the_sites_partitions_and_a_time_limit() -> None:
    batch = {
        "partitions": [{"name": "short", "label": "short (up to 60 min)"}],
        "walltime": 30,
        "max": 600,
    }
    context = form_context([], load_environments(), ("lab",), {})
    page = render_form({**context, "problem": "", "chosen_type": "lab", "batch": batch})
    assert '<option value="short">short (up to 60 min)</option>' in page
    assert 'name="walltime" id="panosc-walltime"' in page and 'max="600" value="30"' in page


@pytest.mark.e2e
@pytest.mark.browser
def test_in_the_browser_the_form_offers_the_partitions_and_home_counts_down_the_time_limit(
    hub: Hub, browser, artifacts: Path, cluster: SlurmCluster
) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    page.set_default_timeout(90_000)
    page.goto(f"{hub.url}/hub/home")
    page.get_by_text("Sign in with Umbrella").click()
    page.fill("input[name=sub]", DEMO_USERS["bob"]["sub"])
    page.get_by_role("button", name="Authorize").click()
    page.goto(f"{hub.url}/hub/spawn/bob/cluster")
    job = page.get_by_role("group", name="Cluster job")
    expect(job.get_by_label("Partition")).to_have_value("short")
    expect(job.get_by_label("Time limit (minutes)")).to_have_value("30")
    job.get_by_label("Partition").select_option("long")
    job.get_by_label("Time limit (minutes)").fill("45")
    page.locator("input[name=environment][value=base]").check()
    page.screenshot(path=artifacts / "slurm-spawn-form.png", full_page=True)
    assert_accessible(page)
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/bob/cluster/**", timeout=180_000)
    [line] = jobs(cluster, "panosc-bob")
    assert line.endswith("RUNNING")
    partition = cluster.slurm("squeue", "-h", "-u", "panosc-bob", "-o", "%P %l").split()
    assert partition == ["long", "45:00"]
    page.goto(f"{hub.url}/hub/home")
    left = page.locator('tr[data-server-name="cluster"] .portal-remaining')
    expect(left).to_contain_text("(time limit)")  # sooner than the culler's hour
    page.screenshot(path=artifacts / "slurm-home.png", full_page=True)
    assert_accessible(page)
    page.locator('button[aria-label="Stop cluster"]').click()
    expect(page.locator('tr[data-server-name="cluster"]')).to_have_count(0, timeout=60_000)
    page.close()
    assert jobs(cluster, "panosc-bob") == []


# -- panosc-portal images export -------------------------------------------------------------


@pytest.mark.docker
def test_export_unpacks_an_image_once_and_replaces_it_whole_when_it_changes(
    tmp_path: Path,
) -> None:
    context = tmp_path / "context"
    (context / "usr" / "bin").mkdir(parents=True)
    (context / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY usr /usr\nENV PATH=/usr/bin\n")
    image = "panosc-test/export:1"
    engine().images.build(path=str(context), tag=image, rm=True)
    target = tmp_path / "environments"
    assert export("tiny", image, target) is True
    facts = json.loads((target / "tiny" / UNPACKED_FILE).read_text())
    assert facts["id"] == engine().images.get(image).id and facts["image"] == image
    assert (target / "tiny" / "usr" / "bin" / "hello").read_text().endswith("echo hello\n")
    assert facts["path"] == "/usr/bin"
    assert export("tiny", image, target) is False  # unchanged: left as it is
    (target / "tiny" / "stale-file").write_text("from the old image")
    (target / "tiny" / UNPACKED_FILE).write_text(json.dumps({**facts, "id": "sha256:old"}))
    assert export("tiny", image, target) is True
    assert not (target / "tiny" / "stale-file").exists()  # a new folder, not a merge
    # the last version stays whole for sessions still running in it, until the next export
    assert sorted(p.name for p in target.iterdir()) == ["tiny", "tiny.previous"]  # no .partial
    assert (target / "tiny.previous" / "stale-file").read_text() == "from the old image"
    (target / "tiny" / UNPACKED_FILE).write_text(json.dumps({**facts, "id": "sha256:old"}))
    assert export("tiny", image, target) is True
    assert sorted(p.name for p in target.iterdir()) == ["tiny", "tiny.previous"]
    assert not (target / "tiny.previous" / "stale-file").exists()  # the older one is gone


def test_export_refuses_an_unknown_environment_naming_the_available_ones(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "portal.cli", "images", "export", "--to", str(tmp_path), "xrff"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "unknown environment(s) xrff; available: base, xrf," in done.stderr


def _crafted_image(tmp_path: Path) -> str:
    """An image made with ``docker import`` of a tar carrying what must not reach the nodes."""
    archive = tmp_path / "crafted.tar"

    def add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int, **attrs: object) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode = kind, mode
        for key, value in attrs.items():
            setattr(info, key, value)
        data = attrs.get("size") and b"#!/bin/sh\necho crafted\n"
        tar.addfile(info, io.BytesIO(data) if data else None)

    script = len(b"#!/bin/sh\necho crafted\n")
    with tarfile.open(archive, "w") as tar:
        for folder in ("usr", "usr/bin", "opt", "etc"):
            add(tar, folder, tarfile.DIRTYPE, 0o755)
        add(tar, "usr/bin/mount", tarfile.REGTYPE, 0o4755, size=script)  # setuid root
        add(tar, "usr/bin/wall", tarfile.REGTYPE, 0o2755, gid=5, size=script)  # setgid tty
        add(tar, "usr/bin/umount", tarfile.LNKTYPE, 0o4755, linkname="usr/bin/mount")
        add(tar, "opt/dev0", tarfile.CHRTYPE, 0o666, devmajor=1, devminor=3)
        add(tar, "opt/fifo0", tarfile.FIFOTYPE, 0o666)
        add(tar, "opt/venv", tarfile.DIRTYPE, 0o775, uid=1000, gid=100)
        add(tar, "opt/venv/run.py", tarfile.REGTYPE, 0o666, uid=1000, gid=100, size=script)
        add(tar, "opt/shadow", tarfile.SYMTYPE, 0o777, linkname="/etc/shadow")
        add(tar, "etc/shadow", tarfile.REGTYPE, 0o640, gid=42, size=script)
        add(tar, "tmp", tarfile.DIRTYPE, 0o1777)
    image = "panosc-test/export-crafted:1"
    subprocess.run(["docker", "import", str(archive), image], check=True, capture_output=True)
    return image


def _unsafe(root: Path) -> list[str]:
    """Whatever under ``root`` (itself included) is not root's, or is setuid, setgid,
    sticky, group- or world-writable, or a device, FIFO or socket."""
    found = []
    for entry in [root, *root.rglob("*")]:
        st = entry.lstat()
        if (st.st_uid, st.st_gid) != (0, 0):
            found.append(f"{entry} owned by {st.st_uid}:{st.st_gid}")
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o7022:
            found.append(f"{entry} mode {stat.filemode(st.st_mode)}")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            found.append(f"{entry} is a {stat.filemode(st.st_mode)[0]} node")
    return found


@pytest.mark.docker
def test_export_leaves_nothing_a_cluster_user_could_abuse(tmp_path: Path) -> None:
    """Root unpacks to storage every node mounts: owners, s-bits, writable folders and
    device nodes of the image must not survive there (nor in ``.previous``)."""
    image = _crafted_image(tmp_path)
    host_shadow = Path("/etc/shadow").stat()
    folder = tmp_path / "environments"
    assert export("crafted", image, folder) is True
    root = folder / "crafted"
    assert _unsafe(root) == []
    assert not (root / "opt" / "dev0").exists() and not (root / "opt" / "fifo0").exists()
    mode = {p: stat.S_IMODE((root / p).lstat().st_mode) for p in ("usr/bin/mount", "tmp")}
    assert mode == {"usr/bin/mount": 0o755, "tmp": 0o755}  # read and run kept, bits gone
    assert stat.S_IMODE((root / "usr/bin/wall").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "opt/venv").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "opt/venv/run.py").stat().st_mode) == 0o644
    assert (root / "opt/venv/run.py").read_text() == "#!/bin/sh\necho crafted\n"
    assert (root / "opt" / "shadow").is_symlink()  # kept as a link, not followed
    assert (root / "opt" / "shadow").readlink() == Path("/etc/shadow")
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o640
    assert Path("/etc/shadow").stat() == host_shadow  # the walk did not follow the link

    # A tree an earlier release unpacked (owners and bits kept, no record of the checks) is
    # unpacked again though its image did not change, and not kept as the previous version:
    # its owners could swap a folder for a link while it was being made safe in place.
    os.chown(root / "opt" / "venv", 1000, 100)
    (root / "usr/bin/mount").chmod(0o4755)
    facts = json.loads((root / UNPACKED_FILE).read_text())
    del facts["sanitised"]
    (root / UNPACKED_FILE).write_text(json.dumps(facts))
    assert export("crafted", image, folder) is True
    assert sorted(p.name for p in folder.iterdir()) == ["crafted"]
    assert _unsafe(root) == []
    assert export("crafted", image, folder) is False  # now current
    (root / UNPACKED_FILE).write_text(json.dumps({**facts, "sanitised": 1, "id": "sha256:old"}))
    assert export("crafted", image, folder) is True
    assert _unsafe(folder / "crafted.previous") == []  # the one kept is safe too
