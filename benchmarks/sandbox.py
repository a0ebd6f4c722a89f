"""Login to JupyterLab-ready: plain local spawner against the sandboxed local backend, in one run.

Not a test: a script that prints figures. Two hubs run side by side on this machine (as root,
as the sandboxed backend needs), each started with ``panosc-portal serve`` against one real
OIDC provider. One uses JupyterHub's plain ``SimpleLocalProcessSpawner`` (the baseline, no
isolation at all); the other ``PortalLocalSpawner``: an account of the user's own, a
bubblewrap sandbox, the network bridges, and 0 or 5 datasets bound. Rounds are interleaved so
drift on the machine hits every configuration alike; a round is a fresh OIDC login, a spawn
through the REST API and JupyterLab answering ``/lab`` with 200 through the proxy, then a
stop. Goal: the median of the paired (same-round) ratios to plain <= 1.10 with 5 datasets.

    .venv/bin/python benchmarks/sandbox.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.catalogue import generate
from benchmarks.spawn import SUB, USER, interleaved, report
from tests.support.net import free_port
from tests.support.umbrella import Hub, Provider


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
        [proposal] = generate(data, datasets=5, open_proposals=0, staff_proposals=0)
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
            "plain SimpleLocalProcessSpawner": ("plain", None),
            "PortalLocalSpawner, 0 datasets": ("portal", {"datasets": []}),
            "PortalLocalSpawner, 5 datasets": ("portal", {"datasets": pids[:5]}),
        }
        try:
            times = interleaved(hubs, configs, args.rounds)
        finally:
            for h in hubs.values():
                h.stop()
            provider.stop()
    report(times, "plain SimpleLocalProcessSpawner", "PortalLocalSpawner, 5 datasets", args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
