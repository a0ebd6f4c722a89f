"""A class logging in at once: N users sign in through OIDC and start a server, all together.

Not a test: a script that prints figures. Two hubs take the same storm in one run, one after
the other and alternating (``--rounds`` storms each), against one real OIDC provider process
(oidc-provider-mock):

- **plain**: JupyterHub itself, ``jupyterhub -f`` with ``GenericOAuthenticator`` and
  ``SimpleLocalProcessSpawner`` (servers run as root, unsandboxed): the baseline;
- **portal**: ``panosc-portal serve`` with the local backend (one account and one bubblewrap
  sandbox per user, the claims and the catalogue asked at spawn time, and every dataset of
  the demo's proposal MA1234 mounted).

The provider runs at a higher priority than everything else, as it would on machines of its
own: starved of CPU by the servers starting beside it, it would fail both hubs alike.

In a storm, N threads each open a fresh browser session at the same moment, log in through
the full OIDC code flow (``/hub/oauth_login``, the provider's page, the callback), start their
server through the REST API and wait until it answers through the proxy. With ``--course``,
the portal's users follow the course link ``/hub/course/<name>`` instead, as a class does.
Both hubs get the same timeouts. A user fails if any step answers an error or the server is
not ready within ``--timeout`` seconds; failures are printed by step and reason.

Printed: failures, p50/p95 of the login and of login-to-ready for each hub and storm, and the
portal's p95 login-to-ready over plain's, per round (the storms of a round run back to back).
Goal: 0 failures and a p95 ratio of at most 1.10.

    .venv/bin/python benchmarks/load.py [--users 100] [--rounds 1] [--course NAME]

Run as root (the portal's sandbox needs it), on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portal.demo.sampledata import generate
from spawner.course_format import server_name
from tests.support.net import free_port, wait_http
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

GOAL = 1.10
#: Seconds between two "is it ready?" questions of a student: a browser follows the progress
#: stream instead; 100 students asking every 0.25 s would load the hub more than the storm.
POLL = 1.0
PROVIDER_NICENESS = -10
PROPOSAL = "MA1234"
#: The same on both hubs: how long a server may take to start, and to answer once started.
SPAWN_TIMEOUTS = {"start_timeout": 600, "http_timeout": 300}


def student(i: int) -> tuple[str, str]:
    """The i-th student's OIDC subject and username."""
    return f"student{i:03d}@umbrella.bench", f"student{i:03d}"


@dataclass
class PlainHub:
    """JupyterHub as its own documentation configures it: the baseline."""

    folder: Path
    issuer: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.folder / "jupyterhub_config.py"
        config.write_text(
            f"""\
c.JupyterHub.bind_url = "{self.url}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{free_port()}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.authenticator_class = "generic-oauth"
c.GenericOAuthenticator.client_id = "plain"
c.GenericOAuthenticator.client_secret = "s"
c.GenericOAuthenticator.oauth_callback_url = "{self.url}/hub/oauth_callback"
c.GenericOAuthenticator.authorize_url = "{self.issuer}/oauth2/authorize"
c.GenericOAuthenticator.token_url = "{self.issuer}/oauth2/token"
c.GenericOAuthenticator.userdata_url = "{self.issuer}/userinfo"
c.GenericOAuthenticator.username_claim = "preferred_username"
c.GenericOAuthenticator.scope = ["openid", "profile"]
c.GenericOAuthenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{self.folder}/homes/{{username}}"
c.SimpleLocalProcessSpawner.args = ["--allow-root"]
c.Spawner.start_timeout = {SPAWN_TIMEOUTS["start_timeout"]}
c.Spawner.http_timeout = {SPAWN_TIMEOUTS["http_timeout"]}
c.JupyterHub.cookie_secret_file = "{self.folder}/cookie_secret"
c.JupyterHub.db_url = "sqlite:///{self.folder}/jupyterhub.sqlite"
c.ConfigurableHTTPProxy.pid_file = "{self.folder}/proxy.pid"
"""
        )
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        with (self.folder / "hub.log").open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)],
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        wait_http(f"{self.url}/hub/health", self.proc, log=self.folder / "hub.log")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)


@dataclass
class Outcome:
    """One student's storm: seconds to log in and to a ready server, or where it failed."""

    login: float | None = None
    ready: float | None = None
    failure: str = ""


def one_student(
    client: PortalClient, sub: str, course: str, timeout: float, go: threading.Event
) -> Outcome:
    """Log in, start the server (or follow the course link), wait until it answers."""
    outcome = Outcome()
    go.wait()
    started = time.perf_counter()
    step = "login"
    try:
        done = client.login(sub)
        if done.status_code != 200 or "/hub/" not in done.url:
            outcome.failure = f"login: HTTP {done.status_code} at {done.url.split('?')[0]}"
            return outcome
        outcome.login = time.perf_counter() - started
        step = "spawn"
        if course:
            r = client.click(f"/hub/course/{course}", timeout=timeout)
            if r.status_code != 200:
                outcome.failure = f"course link: HTTP {r.status_code}"
                return outcome
            server = server_name(course)
        else:
            r = client.api("POST", f"hub/api/users/{client.username()}/server", json={})
            if r.status_code not in (201, 202):
                outcome.failure = f"spawn: HTTP {r.status_code} {r.text[:120]}"
                return outcome
            server = ""
        step = "ready"
        name = client.username()
        # As a browser waits: as long as the spawn may take, not a client's usual 30-60 s.
        while True:
            left = timeout - (time.perf_counter() - started)
            if left <= 0:
                raise TimeoutError(f"not ready within {timeout:.0f} s")
            model = client.api("GET", f"hub/api/users/{name}", timeout=left).json()
            # None: the course link's spawn page has not registered the spawn yet.
            state = model["servers"].get(server)
            if state is not None and not state.get("pending") and not state.get("ready"):
                raise AssertionError(f"the spawn failed: {state}")
            if state and state.get("ready"):
                break
            time.sleep(POLL)
        status = f"user/{name}/{server + '/' if server else ''}api/status"
        while client.api("GET", status, timeout=left).status_code != 200:  # through the proxy
            left = timeout - (time.perf_counter() - started)
            if left <= 0:
                raise TimeoutError("the server did not answer through the proxy")
            time.sleep(POLL)
        outcome.ready = time.perf_counter() - started
    except (requests.RequestException, AssertionError, TimeoutError) as e:
        outcome.failure = f"{step}: {type(e).__name__}: {str(e)[:160]}"
    return outcome


def storm(url: str, users: int, course: str, timeout: float) -> list[Outcome]:
    """All ``users`` at once; then every server is stopped (by its user) before returning."""
    go = threading.Event()
    outcomes: list[Outcome] = [Outcome() for _ in range(users)]
    clients = [PortalClient(url) for _ in range(users)]

    def run(i: int) -> None:
        outcomes[i] = one_student(clients[i], student(i)[0], course, timeout, go)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    time.sleep(1)  # every thread waiting at the gate
    go.set()
    for t in threads:
        t.join()
    stop_all(clients)
    return outcomes


def stop_all(clients: list[PortalClient]) -> None:
    """Stop every student's servers, so the next storm starts from the same state."""
    for client in clients:
        try:
            name = client.username()
            for server in client.api("GET", f"hub/api/users/{name}").json()["servers"]:
                client.stop(server)
        except (requests.RequestException, AssertionError, KeyError):
            continue  # never logged in: no server to stop


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(name: str, outcomes: list[Outcome]) -> tuple[float, str]:
    """One line of figures for a storm; its p95 login-to-ready."""
    logins = [o.login for o in outcomes if o.login is not None]
    ready = [o.ready for o in outcomes if o.ready is not None]
    failed = [o.failure for o in outcomes if o.failure]
    p95 = percentile(ready, 95)
    line = (
        f"{name:28} {len(failed):>8} {percentile(logins, 50):9.2f} {percentile(logins, 95):9.2f}"
        f" {percentile(ready, 50):9.2f} {p95:9.2f}"
    )
    for reason, count in Counter(failed).most_common(5):
        line += f"\n{'':28}   {count} x {reason}"
    return p95, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--course", default="", help="the portal's users follow this course link")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per user, at most")
    parser.add_argument("--keep", action="store_true", help="keep the hubs' folders and logs")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("load: run as root (the portal's sandbox needs it)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="load-bench-"))
    try:
        data = base / "data"
        generate(data)  # the demo's facility: the students are members of its MA1234
        provider = Provider(free_port(), base / "op.log")
        provider.start()
        # The facility's identity provider runs on machines of its own, never on the hub's
        # cores: here it shares them with 100 starting servers, so it goes first.
        os.setpriority(os.PRIO_PROCESS, provider.proc.pid, PROVIDER_NICENESS)
        for i in range(args.users):
            sub, name = student(i)
            provider.set_user(sub, preferred_username=name, proposals=[PROPOSAL])
        (base / "plain").mkdir()
        (base / "portal").mkdir()
        courses = {}
        if args.course:
            courses = {"courses": {"sources": {args.course: str(course_folder(args.course))}}}
        portal = Hub(
            {
                "auth": {
                    "issuer": provider.issuer,
                    "client_id": "portal",
                    "client_secret": "s",
                    "allow_all": True,
                },
                "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
                "spawner": {"backend": "local", "home_dir": str(base / "portal/homes/{username}")},
                **courses,
                "extra_config": {"Spawner": SPAWN_TIMEOUTS},
            },
            base / "portal",
        )
        hubs = {"plain": PlainHub(base / "plain", provider.issuer), "portal": portal}
        results: list[dict[str, list[Outcome]]] = []
        try:
            for h in hubs.values():
                h.start()
            for _ in range(args.rounds):
                results.append(
                    {
                        "plain": storm(hubs["plain"].url, args.users, "", args.timeout),
                        "portal": storm(hubs["portal"].url, args.users, args.course, args.timeout),
                    }
                )
        finally:
            for h in hubs.values():
                h.stop()
            provider.stop()
    finally:
        if args.keep:
            print(f"hub folders and logs kept: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{args.users} users at once, {args.rounds} round(s); seconds")
    heads = ("failures", "login p50", "p95", "ready p50", "p95")
    print(f"{'hub (round)':28} {heads[0]:>8} " + " ".join(f"{h:>9}" for h in heads[1:]))
    ratios = []
    failures = 0
    for i, round_ in enumerate(results, 1):
        p95s = {}
        for name, outcomes in round_.items():
            label = f"{name}{' via course link' if name == 'portal' and args.course else ''} ({i})"
            p95s[name], line = summary(label, outcomes)
            print(line)
        failures += sum(bool(o.failure) for o in round_["portal"])
        ratios.append(p95s["portal"] / p95s["plain"])
    print(
        f"\np95 login-to-ready, portal / plain, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
    )
    ratio = statistics.median(ratios)
    verdict = "meets" if failures == 0 and ratio <= GOAL else "misses"
    print(f"portal failures: {failures}; median ratio {ratio:.2f}: {verdict} the goal"
          f" (0 failures, ratio <= {GOAL:.2f})")  # fmt: skip
    return 0


def course_folder(name: str) -> Path:
    """A course shipped in notebooks/, by its name."""
    folder = Path(__file__).resolve().parent.parent / "notebooks" / name
    if not (folder / "course.yaml").is_file():
        raise SystemExit(f"load: no course {name!r} in notebooks/")
    return folder


if __name__ == "__main__":
    sys.exit(main())
