"""Login to JupyterLab-ready: plain local spawner against the sandboxed local backend, in one run.

Not a test: a script that prints figures. Two hubs run side by side on this machine (as root,
as the sandboxed backend needs), each started with ``panosc-portal serve`` against one real
OIDC provider. One uses JupyterHub's plain ``SimpleLocalProcessSpawner`` (the baseline, no
isolation at all); the other ``PortalLocalSpawner``: an account of the user's own, a
bubblewrap sandbox, the network bridges, and 0 or 5 datasets bound. Rounds are interleaved so
drift on the machine hits every configuration alike; a round is a fresh OIDC login, a spawn
through the REST API and JupyterLab answering ``/lab`` with 200 through the proxy, then a
stop. Goal: median ratio to plain <= 1.10 with 5 datasets.

    .venv/bin/python benchmarks/sandbox.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.catalogue import generate
from benchmarks.spawn import SUB, USER, login_to_lab
from tests.umbrella import Hub, Provider, free_port

GOAL = 1.10


def hub(folder: Path, provider: Provider, data: Path, plain: bool) -> Hub:
    homes = str(folder / "homes/{username}")
    extra: dict = {}
    if plain:
        extra = {
            "JupyterHub": {"spawner_class": "simple"},
            "SimpleLocalProcessSpawner": {"home_dir_template": homes, "args": ["--allow-root"]},
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
            "spawner": {"backend": "local", "home_dir": homes},
            "extra_config": extra,
        },
        folder,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        base = Path(tmp)
        data = base / "data"
        generate(data, datasets=5, proposals=1)
        pids = sorted(f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
                      for p in data.glob("*/*/*") if p.is_dir())  # fmt: skip
        provider = Provider(free_port(), base / "op.log")
        provider.start()
        provider.set_user(SUB, preferred_username=USER, proposals=["MX1000"])
        (base / "plain").mkdir()
        (base / "portal").mkdir()
        hubs = {"plain": hub(base / "plain", provider, data, True)}
        hubs["portal"] = hub(base / "portal", provider, data, False)
        configs = {
            "plain SimpleLocalProcessSpawner": ("plain", None),
            "PortalLocalSpawner, 0 datasets": ("portal", {"datasets": []}),
            "PortalLocalSpawner, 5 datasets": ("portal", {"datasets": pids[:5]}),
        }
        times: dict[str, list[float]] = {name: [] for name in configs}
        try:
            for h in hubs.values():
                h.start()
            for which, options in configs.values():  # warm-up: the account, the caches
                login_to_lab(hubs[which], options)
            for _ in range(args.rounds):
                for name, (which, options) in configs.items():
                    times[name].append(login_to_lab(hubs[which], options))
        finally:
            for h in hubs.values():
                h.stop()
            provider.stop()
    plain = statistics.median(times["plain SimpleLocalProcessSpawner"])
    print(f"login to JupyterLab-ready, {args.rounds} rounds each, seconds")
    print(f"{'configuration':36} {'median':>7} {'min':>6} {'max':>6} {'ratio':>6}")
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"{name:36} {median:7.2f} {min(values):6.2f} {max(values):6.2f} {median / plain:6.2f}"
        )
    ratio = statistics.median(times["PortalLocalSpawner, 5 datasets"]) / plain
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"\nratio with 5 datasets: {ratio:.2f}: {verdict} the {GOAL:.2f} goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
