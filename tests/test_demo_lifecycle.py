"""The demo command as a person runs it: Ctrl-C stops everything; a second run reuses the state.

With ``--spawner docker`` "everything" includes the users' containers (their home volumes stay).
"""

from __future__ import annotations

import os
import pwd
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from portal.demo.run import STOP_TIMEOUT
from portal.demo.sampledata import DEMO_USERS
from tests.support.demo import start_demo
from tests.support.docker_support import (
    engine,
    ensure_images,
    portal_containers,
    remove_user_servers,
)
from tests.support.portal_client import PortalClient

pytestmark = pytest.mark.e2e


def processes_in(folder: Path) -> list[str]:
    """Processes whose working directory lies inside ``folder`` (every demo child does)."""
    found = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            target = Path(os.readlink(cwd))
            cmdline = (cwd.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if target.is_relative_to(folder):
            found.append(f"{cwd.parent.name}: {cmdline}")
    return found


def sandboxed_servers(state: Path) -> list[int]:
    """Pids of the sandboxed servers of the demo in ``state``: processes of a portal account
    whose environment names this demo's hub API (its port is the demo's own)."""
    settings = yaml.safe_load((state / "portal.yaml").read_text())
    api = urlsplit(settings["extra_config"]["JupyterHub"]["hub_bind_url"]).port
    marker = f"JUPYTERHUB_API_URL=http://127.0.0.1:{api}/".encode()
    portal_uids = {e.pw_uid for e in pwd.getpwall() if e.pw_name.startswith("panosc-")}
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.stat().st_uid in portal_uids and marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_every_process_and_a_second_run_reuses_state(tmp_path: Path) -> None:
    state, log = tmp_path / "state", tmp_path / "demo.log"
    first = start_demo(state, log)
    try:
        assert "Generating sample data" in first.output()
        for name in DEMO_USERS:
            assert name in first.output()  # the banner lists the demo logins
        bob = PortalClient(first.url)
        bob.login(DEMO_USERS["bob"]["sub"])
        bob.spawn()
        running = processes_in(state)
        assert sandboxed_servers(state), "bob's server runs, sandboxed, as his account"
        assert any("configurable-http-proxy" in p for p in running), running
        assert any("oidc_provider_mock" in p for p in running), running
    except BaseException:
        first.interrupt()  # a failed check must not leave a demo running for later tests
        raise

    first.proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not leave orphans
    assert first.interrupt() == 0
    assert "Demo stopped." in first.output()
    assert processes_in(state) == []
    assert sandboxed_servers(state) == []

    data_files = sorted((state / "data").rglob("*.nxs"))
    mtimes = [p.stat().st_mtime_ns for p in data_files]
    log.write_text("")
    second = start_demo(state, log)
    try:
        assert "Generating sample data" not in second.output()
        assert "(0 new, 0 changed, 0 removed)" in second.output()
        assert [p.stat().st_mtime_ns for p in data_files] == mtimes
        again = PortalClient(second.url)
        again.login(DEMO_USERS["bob"]["sub"])
        assert (state / "homes/bob").is_dir()  # his home stays for the next run
    finally:
        assert second.interrupt() == 0
    assert processes_in(state) == []


@pytest.mark.docker
def test_ctrl_c_stops_the_docker_demos_containers_and_keeps_the_homes(tmp_path: Path) -> None:
    ensure_images("base")
    client = engine()
    before = {c.id for c in portal_containers(client, "bob")}
    demo = start_demo(tmp_path / "state", tmp_path / "demo.log", "--spawner", "docker")
    try:
        bob = PortalClient(demo.url)
        bob.login(DEMO_USERS["bob"]["sub"])
        bob.spawn("ctrl-c-check")
        started = [c for c in portal_containers(client, "bob") if c.id not in before]
        assert [c.status for c in started] == ["running"], started
        assert demo.interrupt(timeout=STOP_TIMEOUT + 30) == 0
        assert "Demo stopped." in demo.output()
        assert [c.id for c in portal_containers(client, "bob") if c.id not in before] == [], (
            "the demo's containers outlived it"
        )
        assert client.volumes.list(filters={"name": "panosc-home-bob"}), "bob's home went too"
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
        remove_user_servers(client, "bob")


def test_busy_port_gives_a_clear_message(tmp_path: Path, demo) -> None:
    from portal.cli import main

    port = int(demo.url.rsplit(":", 1)[1])
    code = main(["demo", "--port", str(port), "--state-dir", str(tmp_path)])
    assert code == 1
