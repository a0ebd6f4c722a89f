"""Rendering the Helm chart as a cluster would receive it, and reading what it renders.

helm comes from scripts/setup.sh (``setup_helm``, into the virtualenv); without it the tests
that render fail rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.support.paths import ROOT

CHART = ROOT / "helm" / "panosc-portal"
CI = CHART / "ci"
RELEASE, NAMESPACE = "portal", "panosc"
KUBERNETES = "1.33.0"
BIN = Path(sys.executable).parent


def helm() -> str:
    """The helm binary setup_helm installs; its absence fails the test, never skips it."""
    found = shutil.which("helm", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(
            "helm is not installed; scripts/test installs it (setup_helm in scripts/setup.sh)"
        )
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


@cache
def render_text(values: Path, *settings: str, set_json: bool = False) -> str:
    """``helm template`` of the chart with ``values`` and ``--set`` (or ``--set-json``)."""
    flag = "--set-json" if set_json else "--set"
    sets = [a for s in settings for a in (flag, s)]
    out = run_helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values), *sets)
    assert out.returncode == 0, out.stderr
    return out.stdout


def render(values: Path, *settings: str, set_json: bool = False) -> list[dict]:
    """The objects ``helm template`` renders, parsed."""
    return [d for d in yaml.safe_load_all(render_text(values, *settings, set_json=set_json)) if d]


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def full(name: str) -> str:
    return f"{RELEASE}-panosc-portal-{name}"


def selector(component: str) -> dict[str, str]:
    """The labels the chart selects a component's pods by."""
    return {
        "app.kubernetes.io/name": "panosc-portal",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": component,
    }


def hub_portal_yaml(objects: list[dict]) -> str:
    return one(objects, "ConfigMap", full("hub"))["data"]["portal.yaml"]


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    """Each workload's pod spec, by workload name."""
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "DaemonSet")
    }
