"""Login to JupyterLab-ready: plain DockerSpawner against PortalDockerSpawner, in one run.

Not a test: a script that prints figures. Two hubs run side by side on this machine, each
started from a portal.yaml with ``panosc-portal serve`` against one real OIDC provider, and
the same image (panosc/base) with the same resource limits. One uses plain ``DockerSpawner``
(the baseline); the other ours, asked for 0, 5 and 50 datasets. Rounds are interleaved so
drift on the machine hits every configuration alike. A round is: a new browser session logs
in through the full OIDC code flow, starts the server through the REST API, and waits until
JupyterLab answers ``/lab`` with 200; then the server is stopped. Goal: the median of the
paired (same-round) ratios to plain <= 1.10 at 5 datasets; 20 rounds by default, so that two
runs agree within 0.1.

    .venv/bin/python benchmarks/spawn.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.catalogue import generate
from spawner.docker import bridge_gateway
from spawner.environments import load_environments
from tests.support.docker_support import ensure_images
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

USER, SUB = "pi0", "pi0@umbrella.bench"
GOAL = 1.10


def hub(folder: Path, provider: Provider, data: Path, plain: bool) -> Hub:
    extra: dict = {}
    if plain:
        base = load_environments()["base"]
        extra = {
            "JupyterHub": {"spawner_class": "docker"},
            "DockerSpawner": {  # the same image and the same resource limits as ours
                "image": base.image,
                "cpu_limit": base.cpu,
                "mem_limit": base.memory,
                "remove": True,
                "use_internal_ip": True,
                "pull_policy": "never",
            },
        }
    return Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "bench",
                "client_secret": "s",
                "allow_all": True,
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
            "spawner": {
                "backend": "docker",
                "docker": {"hub_connect_ip": bridge_gateway(), "hub_api_port": free_port()},
            },
            "extra_config": extra,
        },
        folder,
    )


def login_to_lab(hub: Hub, options: dict | None) -> float:
    """Seconds from a fresh login to JupyterLab answering; the server is stopped afterwards."""
    started = time.perf_counter()
    client = PortalClient(hub.url)
    client.login(SUB)
    client.spawn("", options, every=0.05)  # fine steps: 0.5 s ones would swamp the ratio
    while client.api("GET", f"user/{USER}/lab").status_code != 200:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    client.stop()
    return elapsed


def interleaved(
    hubs: dict[str, Hub], configs: dict[str, tuple[str, dict | None]], rounds: int
) -> dict[str, list[float]]:
    """Start the hubs, warm each configuration up once, then time ``rounds`` interleaved
    rounds of :func:`login_to_lab`; configuration -> seconds. The caller stops the hubs."""
    for h in hubs.values():
        h.start()
    for which, options in configs.values():  # warm-up: caches, the first home or account
        login_to_lab(hubs[which], options)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(rounds):
        for name, (which, options) in configs.items():
            times[name].append(login_to_lab(hubs[which], options))
    return times


def report(times: dict[str, list[float]], baseline: str, goal: str, rounds: int) -> None:
    """Print each configuration's median, minimum and maximum, and its ratio to ``baseline``
    as the median of the ratios within each interleaved round (with their quartiles), then
    whether ``goal``'s ratio meets :data:`GOAL`. Paired ratios cancel the drift a noisy
    machine puts into whole rounds, which medians of separate columns do not."""
    plain = times[baseline]
    print(f"login to JupyterLab-ready, {rounds} interleaved rounds, seconds")
    print(f"{'configuration':36} {'median':>7} {'min':>6} {'max':>6}   ratio (q1-q3)  min ratio")
    ratios = {}
    for name, values in times.items():
        paired = sorted(v / p for v, p in zip(values, plain, strict=True))
        q1, ratio, q3 = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
        ratios[name] = ratio
        print(
            f"{name:36} {statistics.median(values):7.2f} {min(values):6.2f} {max(values):6.2f}"
            f"   {ratio:5.2f} ({q1:.2f}-{q3:.2f})  {min(values) / min(plain):8.2f}"
        )
    verdict = "meets" if ratios[goal] <= GOAL else "misses"
    print(f"\nratio of {goal}: {ratios[goal]:.2f}: {verdict} the {GOAL:.2f} goal")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    ensure_images("base")
    client = docker.from_env()
    with tempfile.TemporaryDirectory(prefix="spawn-bench-") as tmp:
        base = Path(tmp)
        data = base / "data"
        [proposal] = generate(data, datasets=50, open_proposals=0, staff_proposals=0)
        pids = sorted(f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
                      for p in data.glob("*/*/*") if p.is_dir())  # fmt: skip
        provider = Provider(free_port(), base / "op.log")
        provider.start()
        provider.set_user(SUB, preferred_username=USER, proposals=[proposal])
        (base / "plain").mkdir()
        (base / "portal").mkdir()
        hubs = {"plain": hub(base / "plain", provider, data, True)}
        hubs["portal"] = hub(base / "portal", provider, data, False)
        configs = {
            "plain DockerSpawner": ("plain", None),
            "PortalDockerSpawner, 0 datasets": ("portal", {"datasets": []}),
            "PortalDockerSpawner, 5 datasets": ("portal", {"datasets": pids[:5]}),
            "PortalDockerSpawner, 50 datasets": ("portal", {"datasets": pids[:50]}),
        }
        try:
            times = interleaved(hubs, configs, args.rounds)
        except Exception:
            for name, h in hubs.items():  # the hub's side of the failure, before it is deleted
                log = h.log.read_text(errors="replace") if h.log.exists() else ""
                tail = log.splitlines()[-40:]
                print(f"--- last lines of the {name} hub's log ---", *tail, sep="\n")
            raise
        finally:
            for h in hubs.values():
                h.stop()
            provider.stop()
            for c in client.containers.list(all=True, filters={"name": USER}):
                c.remove(force=True)
            for v in client.volumes.list(filters={"name": f"panosc-home-{USER}"}):
                v.remove(force=True)
    report(times, "plain DockerSpawner", "PortalDockerSpawner, 5 datasets", args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
