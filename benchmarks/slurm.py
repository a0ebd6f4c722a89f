"""Login to JupyterLab-ready on Slurm against the Docker backend, in one run; and the time a
job takes from its submission to running.

Not a test: a script that prints figures. Run as root: it starts a real Slurm cluster
(munged, slurmctld, two slurmd nodes in network namespaces, :mod:`tests.support.slurm`)
and two hubs side by side from portal.yaml with ``panosc-portal serve`` against one real
OIDC provider: ``PortalDockerSpawner`` (the baseline) and ``PortalSlurmSpawner``, with the
same environment (the base image, unpacked for Slurm by ``panosc-portal images export``)
and 5 datasets. Rounds are interleaved (:func:`benchmarks.spawn.interleaved`); a round is
a fresh OIDC login, a spawn through the REST API and JupyterLab answering ``/lab`` with
200 through the proxy, then a stop. Submit-to-running is read from the Slurm hub's log:
from "Submitted job" to "Starting on node".

    .venv/bin/python benchmarks/slurm.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.catalogue import generate
from benchmarks.spawn import SUB, USER, interleaved, report
from benchmarks.spawn import hub as docker_hub
from tests.support.docker_support import ensure_images
from tests.support.net import free_port
from tests.support.slurm import SlurmCluster
from tests.support.umbrella import Hub, Provider

#: Shared storage the compute nodes' users must traverse (not a private temporary folder).
SITE = Path("/var/tmp/panosc-slurm-bench")
ENVIRONMENTS = Path("/var/tmp/panosc-environments")
_STAMP = re.compile(r"^\[I (\S+ \S+) JupyterHub .*: (Submitted job|Starting on) ")


def slurm_hub(folder: Path, provider: Provider, data: Path, cluster: SlurmCluster) -> Hub:
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
                "backend": "slurm",
                "slurm": {
                    "hub_connect_ip": cluster.controller_ip,
                    "hub_api_port": free_port(),
                    "partitions": {"short": {"max_minutes": 60}},
                    "slurm_conf": str(cluster.conf),
                    "environments_dir": str(ENVIRONMENTS),
                    "home_dir": str(folder / "homes/{username}"),
                },
            },
        },
        folder,
    )


def submit_to_running(log: Path) -> list[float]:
    """Seconds from each "Submitted job" to the next "Starting on" in the hub's log."""
    times, submitted = [], None
    for line in log.read_text(errors="replace").splitlines():
        match = _STAMP.match(line)
        if not match:
            continue
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S.%f")
        if match[2] == "Submitted job":
            submitted = at
        elif submitted is not None:
            times.append((at - submitted).total_seconds())
            submitted = None
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    ensure_images("base")
    export = ["images", "export", "--to", str(ENVIRONMENTS), "base"]
    subprocess.run([sys.executable, "-m", "portal.cli", *export], check=True)
    shutil.rmtree(SITE, ignore_errors=True)
    SITE.mkdir(parents=True)
    SITE.chmod(0o755)
    data = SITE / "data"
    [proposal] = generate(data, datasets=5, open_proposals=0, staff_proposals=0)
    pids = sorted(f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
                  for p in data.glob("*/*/*") if p.is_dir())  # fmt: skip
    cluster = SlurmCluster(SITE / "cluster", net=214).start()  # beside the tests' 213
    provider = Provider(free_port(), SITE / "op.log")
    provider.start()
    provider.set_user(SUB, preferred_username=USER, proposals=[proposal])
    for name in ("docker", "slurm"):
        (SITE / name).mkdir()
    hubs = {
        "docker": docker_hub(SITE / "docker", provider, data, False),
        "slurm": slurm_hub(SITE / "slurm", provider, data, cluster),
    }
    options = {"environment": "base", "datasets": pids[:5]}
    configs = {
        "PortalDockerSpawner, 5 datasets": ("docker", options),
        "PortalSlurmSpawner, 5 datasets": ("slurm", options),
    }
    try:
        times = interleaved(hubs, configs, args.rounds)
    finally:
        for h in hubs.values():
            h.stop()
        provider.stop()
        cluster.stop()
        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"name": USER}):
            c.remove(force=True)
        for v in client.volumes.list(filters={"name": f"panosc-home-{USER}"}):
            v.remove(force=True)
    report(times, "PortalDockerSpawner, 5 datasets", "PortalSlurmSpawner, 5 datasets", args.rounds)
    waits = submit_to_running(hubs["slurm"].log)[1:]  # the warm-up round's is left out
    q1, median, q3 = statistics.quantiles(waits, n=4) if len(waits) > 1 else waits * 3
    print(
        f"\nSlurm, submit to running: median {median:.2f} s (q1-q3 {q1:.2f}-{q3:.2f}),"
        f" min {min(waits):.2f} s, max {max(waits):.2f} s, {len(waits)} jobs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
