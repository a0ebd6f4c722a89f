"""Smoke test of hub (see images/smoke.py): the installed portal, kubespawner and the proxy.

The hub image installs the portal as a wheel would be installed, so this is also where the
environments table is checked to ship inside the package (``spawner/environments.yaml``).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

from smoke import run

HERE = Path(__file__).resolve().parent


def test_portal_installed_with_its_environments_table() -> None:
    import portal
    from spawner.environments import DATA_FILE, load_environments

    assert "site-packages" in portal.__file__, portal.__file__
    assert not DATA_FILE.is_symlink(), f"{DATA_FILE} should be a copy in an installed package"
    assert load_environments() == load_environments(HERE.parent / "environments.yaml")
    run("panosc-portal", "--version")


def test_kubespawner_and_our_entry_points() -> None:
    from importlib.metadata import entry_points, version

    from kubespawner import KubeSpawner  # kubespawner 7 registers no entry point

    assert version("jupyterhub-kubespawner").startswith("7.1."), version("jupyterhub-kubespawner")
    assert KubeSpawner.start
    spawners = {e.name for e in entry_points(group="jupyterhub.spawners")}
    authenticators = {e.name for e in entry_points(group="jupyterhub.authenticators")}
    assert "portal-local" in spawners, spawners
    assert "umbrella" in authenticators, authenticators


def test_hub_and_proxy_start_as_non_root() -> None:
    assert run("configurable-http-proxy", "--version").strip().startswith("5.3")
    hub = subprocess.Popen(
        ["jupyterhub", "--port=18000", "--JupyterHub.authenticator_class=dummy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:18000/hub/api") as answer:
                    assert json.load(answer)["version"].startswith("6."), "unexpected hub version"
                    break
            except OSError:
                assert hub.poll() is None and time.monotonic() < deadline, "the hub did not start"
                time.sleep(0.5)
    finally:
        hub.terminate()
        output = hub.communicate(timeout=30)[0]
    assert "Traceback" not in output, output
