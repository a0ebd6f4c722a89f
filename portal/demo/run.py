"""``panosc-portal demo``: the whole portal on one machine, with nothing outside it.

It generates sample data (once), indexes it, starts a real OpenID Connect provider
(oidc-provider-mock) with the demo users, writes a ``portal.yaml`` for them and starts
JupyterHub from it exactly as a site would. Every child runs in its own process group,
so Ctrl-C (or SIGTERM) stops all of them and the servers they started, containers included
(the users' homes stay, on disk or in Docker volumes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from portal import settings
from portal.demo.sampledata import DEMO_USERS, generate
from portal.serve import prepare_hub
from portal.settings import PortalSettings

DEMO_CLIENT_ID = "panosc-portal-demo"
DEMO_CLIENT_SECRET = "demo-client-secret"  # the demo provider accepts any secret
READY_TIMEOUT = 90.0
#: How long the children have to stop. The hub stops the Docker servers one at a time (Docker
#: gives each up to 10 s to exit), so a few of them need more than a few seconds.
STOP_TIMEOUT = 60.0


class DemoError(Exception):
    """The demo cannot start; the message says what to do."""


def check_port_free(port: int, what: str, flag: str) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise DemoError(f"port {port} ({what}) is in use; choose another with {flag}") from None


def read_only(tree: Path) -> None:
    """Make the sample data read-only, as facility storage is for users.

    As root, the tree is also handed to ``nobody``, so a capability-less root server
    cannot simply ``chmod`` it back.
    """
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        mode = 0o555 if path.is_dir() else 0o444
        if os.geteuid() == 0:
            os.chown(path, 65534, 65534)
        path.chmod(mode)


_HANDED_OUT: set[int] = set()


def ephemeral_port() -> int:
    """A free port for an internal listener nobody types (hub API, proxy API).

    Never one handed out before: once the probe socket closes, the kernel may offer the same
    port again, and the hub's API and the proxy's would then collide.
    """
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def spawner_settings(state: Path, backend: str) -> tuple[dict, dict]:
    """The demo's ``spawner:`` section, and the hub address settings that go with it.

    Locally the hub's API gets an ephemeral port on loopback; with Docker it listens on the
    bridge, where containers reach it. The Docker demo needs the base image built first.
    """
    if backend == "local":
        local = {"backend": "local", "home_dir": str(state / "homes/{username}")}
        return local, {"hub_bind_url": f"http://127.0.0.1:{ephemeral_port()}"}
    import docker

    from spawner.docker import bridge_gateway
    from spawner.environments import load_environments

    image = load_environments()["base"].image
    try:
        client = docker.from_env()
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise DemoError(
            f"the Docker demo needs the image {image}; build it first with:"
            " panosc-portal images build base --bootstrap-base"
        ) from None
    except docker.errors.DockerException as e:
        raise DemoError(f"--spawner docker needs a running Docker engine: {e}") from None
    connect = {"hub_connect_ip": bridge_gateway(client), "hub_api_port": ephemeral_port()}
    return {"backend": "docker", "docker": connect}, {}


def demo_courses(backend: str) -> dict[str, str]:
    """The courses shipped in ``notebooks/`` (a source checkout), for the demo's users.

    Locally every server runs in the hub's own Python, which has h5py and silx but not the
    technique libraries, so only the NeXus course is listed; Docker runs each course in its
    own environment, so all of them are.
    """
    folder = Path(__file__).resolve().parents[2] / "notebooks"
    found = sorted(p.parent for p in folder.glob("*/course.yaml"))
    if backend == "local":
        found = [p for p in found if p.name == "nexus-basics"]
    return {p.name: str(p) for p in found}


#: The demo's landing page: a made-up facility, and links a visitor can follow from anywhere.
DEMO_BRANDING = {
    "name": "PaNOSC Portal",
    "facility": "Demo Light Source · sample data",
    "links": [
        {"title": "Help: the JupyterLab guide", "url": "https://jupyterlab.readthedocs.io/"},
        {"title": "About PaNOSC", "url": "https://www.panosc.eu/"},
        {"title": "Dataset catalogue", "url": "/hub/datasets"},
    ],
}


def demo_settings(state: Path, port: int, oidc_port: int, backend: str = "local") -> dict:
    """The demo's ``portal.yaml``, written to the state folder so it can be read and reused.

    The hub's and the proxy's internal APIs get ephemeral ports, so two demos (or a demo
    and another JupyterHub) can run side by side on one machine.
    """
    spawner, hub_config = spawner_settings(state, backend)
    courses = demo_courses(backend)
    return {
        "hub": {"ip": "127.0.0.1", "port": port, "state_dir": str(state / "hub")},
        "auth": {
            "issuer": f"http://127.0.0.1:{oidc_port}",
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "allowed_groups": ["researchers", "trainers", "admins"],
            "admin_groups": ["admins"],
            "discovery_timeout": 20,
        },
        "catalogue": {
            "backend": "local",
            "local": {
                "data_root": str(state / "data"),
                "index_path": str(state / "hub/catalogue.sqlite"),
            },
        },
        "spawner": spawner,
        "courses": {"sources": courses, "trainer_groups": ["trainers"]},
        "branding": DEMO_BRANDING,
        "extra_config": {
            # Ctrl-C stops the users' servers too: a site's Docker hub leaves its containers
            # running across a restart (render.py), but the demo stops what it started.
            "JupyterHub": {**hub_config, "cleanup_servers": True},
            "ConfigurableHTTPProxy": {"api_url": f"http://127.0.0.1:{ephemeral_port()}"},
            # homes of earlier demo runs, when servers ran as the hub's own user, are handed
            # over to the users' accounts
            "PortalLocalSpawner": {"legacy_home_owner": os.geteuid()},
        },
    }


@dataclass
class Demo:
    """The processes of one demo run, and how to stop them all."""

    state: Path
    port: int
    oidc_port: int
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start_child(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.state / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (owned by child)
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.state,
            start_new_session=True,
        )
        self.children.append((name, proc))
        return proc

    def wait_ready(self, name: str, url: str) -> None:
        proc = dict(self.children)[name]
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise DemoError(
            f"{name} was not ready at {url} after {READY_TIMEOUT:g} s:\n{self.tail(name)}"
        )

    def tail(self, name: str, lines: int = 25) -> str:
        log = self.state / "logs" / f"{name}.log"
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(f"  | {line}" for line in text) + f"\n  (full log: {log})"

    def stop(self) -> None:
        """SIGTERM every child (the hub stops its proxy and servers), then SIGKILL stragglers.

        It takes :data:`STOP_TIMEOUT` at most; ``run_demo`` ignores further Ctrl-C presses
        meanwhile, so an impatient second press cannot abandon the clean-up half way and leave
        orphans.
        """
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def prepare(state: Path, port: int, oidc_port: int, backend: str) -> PortalSettings:
    """Sample data and the demo's portal.yaml: what the demo adds before the hub's own set-up."""
    for sub in ("hub", "logs", "homes"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    data = state / "data"
    if not (data / "proposals.yaml").exists():
        print(f"Generating sample data in {data} ...", flush=True)
        generate(data)
        read_only(data)
    config_yaml = state / "portal.yaml"
    config_yaml.write_text(
        "# Written by `panosc-portal demo` on every run; edit the flags, not this file.\n"
        + yaml.safe_dump(demo_settings(state, port, oidc_port, backend), sort_keys=False)
    )
    return settings.load(config_yaml)


def print_banner(url: str, state: Path) -> None:
    print(f"\nPaNOSC Portal demo is running: {url}\n")
    print("Click 'Sign in with Umbrella', then click one of these users on the provider's page:")
    for name, claims in DEMO_USERS.items():
        proposals = ", ".join(claims["proposals"]) or "none"
        groups = ", ".join(claims["groups"])
        print(f"  {claims['sub']:20} {name:6} groups: {groups:24} proposals: {proposals}")
    print(
        f"\nState and logs: {state} (delete it to start afresh). Press Ctrl-C to stop.", flush=True
    )


def run_demo(state: Path, port: int, oidc_port: int, backend: str = "local") -> int:
    """Start the demo and block until Ctrl-C/SIGTERM or until the hub exits."""
    state = state.resolve()
    check_port_free(port, "the portal", "--port")
    check_port_free(oidc_port, "the demo identity provider", "--oidc-port")
    hub_command, env = prepare_hub(prepare(state, port, oidc_port, backend))
    demo = Demo(state, port, oidc_port)

    def on_signal(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the first signal starts the clean-up;
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # later ones must not interrupt it
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        users = [f"--user-claims={json.dumps(claims)}" for claims in DEMO_USERS.values()]
        demo.start_child(
            "oidc-provider",
            [sys.executable, "-m", "oidc_provider_mock", "-p", str(oidc_port), *users],
            env,
        )
        demo.wait_ready(
            "oidc-provider", f"http://127.0.0.1:{oidc_port}/.well-known/openid-configuration"
        )
        demo.start_child("jupyterhub", hub_command, env)
        demo.wait_ready("jupyterhub", f"http://127.0.0.1:{port}/hub/health")
        print_banner(f"http://127.0.0.1:{port}/", state)
        hub = dict(demo.children)["jupyterhub"]
        while hub.poll() is None:
            time.sleep(0.5)
        print(f"JupyterHub exited with code {hub.returncode}:\n{demo.tail('jupyterhub')}")
        return 1
    except KeyboardInterrupt:
        print("\nStopping the demo and its servers ...", flush=True)
        return 0
    finally:
        demo.stop()
        print("Demo stopped.", flush=True)
