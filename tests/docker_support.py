"""Helpers for tests on the real Docker engine (no fakes: the engine runs our images)."""

from __future__ import annotations

import re
import subprocess
import sys

import docker
import pytest

from spawner.environments import load_environments


def engine() -> docker.DockerClient:
    """The local engine; a missing engine fails the test run (scripts/test starts one)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"no Docker engine answers ({e}); scripts/test installs and starts dockerd")
    return client


def bridge_ip() -> str:
    """This host's address on the default Docker bridge (docker0), where containers reach it."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out).group(1)


def ensure_images(*names: str) -> None:
    """Build the environments' images with our own build tool when they are missing."""
    client = engine()
    envs = load_environments()
    missing = []
    for name in names:
        try:
            client.images.get(envs[name].image)
        except docker.errors.ImageNotFound:
            missing.append(name)
    if missing:
        subprocess.run(
            [sys.executable, "-m", "portal.cli", "images", "build", *missing, "--bootstrap-base"],
            check=True,
        )


def portal_containers(client: docker.DockerClient, username: str) -> list:
    return [
        c
        for c in client.containers.list(
            all=True, filters={"label": "org.panosc.portal.environment"}
        )
        if c.name.startswith(f"panosc-{username}")
    ]
