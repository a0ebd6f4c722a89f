"""Outage drills: the identity provider or the catalogue down or hanging, the hub restarted.

Each drill breaks one real component in the middle of what a researcher does, and checks what
they see (a clear page, within the configured timeout, never a hang or a bare 500), that
nothing is lost (their session, their servers, their home), and that everything works again
once the component is back, without restarting the hub.

Real components: oidc-provider-mock (stopped to be down, SIGSTOPped to hang: the kernel
still accepts connections, nothing answers), a hub started from portal.yaml with the
sandboxed local backend or the Docker engine. The catalogue is the test SciCat server
(:mod:`tests.support.fake_scicat`, which follows SciCat's backend) made to hang by its ``delay``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from portal.demo.sampledata import DEMO_USERS, generate
from spawner.docker import bridge_gateway
from tests.support.catalogue_examples import FACILITY
from tests.support.docker_support import (
    engine,
    ensure_images,
    portal_containers,
    remove_user_servers,
)
from tests.support.fake_scicat import SciCatServer, SciCatUser, scicat_record
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e

ALICE = DEMO_USERS["alice"]["sub"]
REQUEST_TIMEOUT = 2  # seconds, the hub's auth.request_timeout in these drills
CATALOGUE_TIMEOUT = 1  # seconds per catalogue request, with one retry


def alice_at(provider: Provider) -> None:
    provider.set_user(ALICE, **{k: v for k, v in DEMO_USERS["alice"].items() if k != "sub"})


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    p = Provider(free_port(), tmp_path / "op.log")
    p.start()
    alice_at(p)
    yield p
    if p.proc and p.proc.poll() is None:
        p.proc.send_signal(signal.SIGCONT)
    p.stop()


@pytest.fixture
def scicat() -> Iterator[tuple[SciCatServer, str]]:
    server = SciCatServer(
        datasets=[scicat_record(e) for e in FACILITY],
        users={"portal": SciCatUser("portal", "", frozenset({"admin"}), "pw")},
    )
    with server.running() as url:
        yield server, url


@pytest.fixture
def hub(provider: Provider, scicat: tuple[SciCatServer, str], tmp_path: Path) -> Iterator[Hub]:
    server, url = scicat
    h = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-drills",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
                "request_timeout": REQUEST_TIMEOUT,
            },
            "catalogue": {
                "backend": "scicat",
                "scicat": {
                    "url": url,
                    "auth_mode": "service",
                    "timeout": CATALOGUE_TIMEOUT,
                    "retries": 1,
                    "cache_ttl": 0,
                },
            },
            "spawner": {"home_dir": str(tmp_path / "homes/{username}")},
            "extra_config": {
                "SciCatCatalogue": {"service_token": server.issue("portal")},
                # claims older than this are not trusted for a spawn (the provider drill)
                "PortalSpawner": {"claims_max_age": 3},
            },
        },
        tmp_path,
    )
    h.start()
    yield h
    h.stop()


def break_provider(provider: Provider, how: str) -> None:
    if how == "down":
        provider.stop()
    else:
        os.kill(provider.proc.pid, signal.SIGSTOP)


def mend_provider(provider: Provider, how: str) -> None:
    if how == "down":
        provider.start()  # a new process: new signing key, no users
        alice_at(provider)
    else:
        os.kill(provider.proc.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["down", "hanging"])
def test_an_identity_provider_outage_at_sign_in_is_a_clear_page_then_sign_in_works(
    hub: Hub, provider: Provider, how: str
) -> None:
    """The provider fails between the user's login page and the hub's token exchange."""
    alice = PortalClient(hub.url)
    page = alice.http.get(f"{hub.url}/hub/oauth_login?next=/hub/home", timeout=30)
    back = alice.http.post(page.url, data={"sub": ALICE}, allow_redirects=False, timeout=30)
    callback = back.headers["Location"]
    assert "/hub/oauth_callback?" in callback
    break_provider(provider, how)
    started = time.monotonic()
    answer = alice.http.get(callback, timeout=60)
    took = time.monotonic() - started
    assert answer.status_code == 503, answer.text[:500]
    assert f"the identity provider ({provider.issuer}) did not answer" in answer.text
    assert "Nothing was changed; please try again in a minute" in answer.text
    # connect and answer each have the timeout; a hang costs both at most
    assert took < 2 * REQUEST_TIMEOUT + 3, f"the page took {took:.1f} s"

    mend_provider(provider, how)
    again = PortalClient(hub.url)
    done = again.login(ALICE)
    assert done.status_code == 200 and done.url.endswith("/hub/home"), done.url
    assert again.username() == "alice"


@pytest.mark.parametrize("how", ["down", "hanging"])
def test_an_identity_provider_outage_at_spawn_refuses_clearly_and_keeps_the_session(
    hub: Hub, provider: Provider, how: str
) -> None:
    """Claims are read again before a spawn; a provider that cannot answer is not a "no"."""
    alice = PortalClient(hub.url)
    assert alice.login(ALICE).status_code == 200
    alice.api_token()
    time.sleep(3.5)  # past claims_max_age: the spawn must ask the provider
    break_provider(provider, how)
    started = time.monotonic()
    refused = alice.api("POST", "hub/api/users/alice/server", json={"datasets": []})
    took = time.monotonic() - started
    assert refused.status_code == 503, refused.text
    assert "identity provider could not be asked for your current groups" in refused.text
    assert took < 2 * REQUEST_TIMEOUT + 5, f"the answer took {took:.1f} s"
    # Not logged out: the browser session still works, with nothing started.
    home = alice.click("/hub/home")
    assert home.status_code == 200 and "/hub/login" not in home.url
    assert alice.api("GET", "hub/api/users/alice").json()["servers"] == {}

    mend_provider(provider, how)
    if how == "down":  # the mock keeps tokens in memory: its new process knows none
        assert alice.login(ALICE).status_code == 200
    alice.spawn("", {"datasets": []})
    assert alice.api("GET", "user/alice/api/status").status_code == 200
    alice.stop()


def test_a_hanging_catalogue_is_a_clear_page_everywhere_and_nothing_is_lost(
    hub: Hub, scicat: tuple[SciCatServer, str]
) -> None:
    server, _ = scicat
    alice = PortalClient(hub.url)
    assert alice.login(ALICE).status_code == 200
    alice.spawn("before", {"datasets": []})  # a server that runs through the outage

    server.delay = 3600  # accepts every request, answers none
    waits = {}
    for path in ("/hub/datasets", "/hub/spawn", "/hub/open?dataset=20.500.12269/x"):
        started = time.monotonic()
        page = alice.click(path, timeout=60)
        waits[path] = (time.monotonic() - started, page)
    limit = 2 * CATALOGUE_TIMEOUT + 5  # one request and its retry, and the page
    for path, (took, page) in waits.items():
        assert took < limit, f"{path} took {took:.1f} s"
        assert "cannot" in page.text and "right now" in page.text, (path, page.text[:300])
    assert waits["/hub/open?dataset=20.500.12269/x"][1].status_code == 503
    started = time.monotonic()
    refused = alice.api("POST", "hub/api/users/alice/servers/during", json={})
    assert time.monotonic() - started < limit
    assert refused.status_code == 503, refused.text
    assert "catalogue" in refused.text
    # The running server, the session and the home are untouched.
    assert alice.api("GET", "user/alice/before/api/status").status_code == 200
    assert alice.click("/hub/home").status_code == 200

    server.delay = 0  # the catalogue is back: everything works, no hub restart
    listing = alice.click("/hub/datasets")
    assert listing.status_code == 200 and "cannot answer" not in listing.text
    alice.spawn("after", {})
    assert alice.api("GET", "user/alice/after/api/status").status_code == 200
    for server_name in ("before", "after"):
        alice.stop(server_name)


# -- the hub restarted in the middle of 20 spawns (Docker: servers outlive the hub) ------

STUDENTS = [f"drill{i:02d}" for i in range(20)]


@pytest.mark.docker
def test_a_hub_restart_in_the_middle_of_20_spawns_loses_nothing(tmp_path: Path) -> None:
    ensure_images("base")
    client = engine()
    data = tmp_path / "data"
    generate(data)
    provider = Provider(free_port(), tmp_path / "op.log")
    provider.start()
    for name in STUDENTS:
        provider.set_user(f"{name}@umbrella.drill", preferred_username=name, groups=["class"])
    hub = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-restart-drill",
                "client_secret": "s",
                "allowed_groups": ["class"],
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
            "spawner": {
                "backend": "docker",
                "docker": {"hub_connect_ip": bridge_gateway(), "hub_api_port": free_port()},
            },
            "extra_config": {"Spawner": {"start_timeout": 300, "http_timeout": 240}},
        },
        tmp_path / "hub",
    )
    (tmp_path / "hub").mkdir()
    hub.start()
    try:
        students = {}
        for name in STUDENTS:
            students[name] = PortalClient(hub.url)
            assert students[name].login(f"{name}@umbrella.drill").status_code == 200
            students[name].api_token()

        def spawn(name: str) -> None:
            r = students[name].api("POST", f"hub/api/users/{name}/server", json={"datasets": []})
            assert r.status_code in (201, 202), r.text

        threads = [threading.Thread(target=spawn, args=(n,)) for n in STUDENTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ready_before = wait_until_some_ready(students, at_least=3)
        starting = [n for n in STUDENTS if n not in ready_before]
        assert starting, "every server was up before the restart: no storm to cut short"
        for name in ready_before:  # work in progress, in the home
            [box] = [c for c in portal_containers(client, name) if c.status == "running"]
            assert box.exec_run(["sh", "-c", "echo kept > /home/jovyan/work.txt"]).exit_code == 0
        boxes_before = {n: ids_of(client, n) for n in ready_before}

        hub.stop()  # mid-storm: some servers ready, some still starting
        hub.start()

        # Every session survives: the same cookies still sign the students in.
        for name, student in students.items():
            assert student.username() == name
        # Servers ready before the restart are the same containers, still answering.
        for name in ready_before:
            assert ids_of(client, name) == boxes_before[name]
            status = students[name].api("GET", f"user/{name}/api/status")
            assert status.status_code == 200, (name, status.status_code)
        # Spawns cut short end (ready or stopped, never pending forever); each student can
        # then start again, and every home is still there.
        for name, student in students.items():
            state = settle(student, name)
            if not state:
                student.spawn("", {"datasets": []})
            box = [c for c in portal_containers(client, name) if c.status == "running"]
            assert len(box) == 1, name
        for name in ready_before:
            [box] = [c for c in portal_containers(client, name) if c.status == "running"]
            out = box.exec_run(["cat", "/home/jovyan/work.txt"]).output.decode()
            assert out.strip() == "kept", name
    finally:
        hub.stop()
        provider.stop()
        remove_user_servers(client, *STUDENTS)


def ids_of(client, name: str) -> list[str]:
    return sorted(c.id for c in portal_containers(client, name) if c.status == "running")


def wait_until_some_ready(students: dict[str, PortalClient], at_least: int) -> list[str]:
    """The students whose server is ready, once at least ``at_least`` are (and some not)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        ready = [
            name
            for name, student in students.items()
            if (student.api("GET", f"hub/api/users/{name}").json()["servers"].get("") or {}).get(
                "ready"
            )
        ]
        if len(ready) >= at_least:
            return ready
        time.sleep(0.5)
    raise AssertionError(f"fewer than {at_least} servers ready after 240 s")


def settle(student: PortalClient, name: str) -> dict:
    """The student's default server once it is no longer pending: its model, or {} if none."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            state = student.api("GET", f"hub/api/users/{name}").json()["servers"].get("")
        except requests.RequestException:
            state = {"pending": "hub"}
        if not state or not state.get("pending"):
            return state or {}
        time.sleep(1)
    raise AssertionError(f"{name}'s server still pending 300 s after the restart")
