"""Helpers for tests on the real Docker engine (no fakes: the engine runs our images)."""

from __future__ import annotations

import subprocess
import sys

import docker
import pytest

from spawner.environments import load_environments

#: The images a test session builds: all seven, since a clean build of them all takes about
#: 5 minutes on CI's 2 cores (benchmarks/images_build.py). PANOSC_TEST_IMAGES="base xrf"
#: narrows it for a quicker local run; each name still pulls in the images it is built on.
TEST_IMAGES_ENV = "PANOSC_TEST_IMAGES"


def engine() -> docker.DockerClient:
    """The local engine; a missing engine fails the test run (scripts/test starts one)."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(f"no Docker engine answers ({e}); scripts/test installs and starts dockerd")
    return client


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
    """The portal's containers of one user, running or not (by the labels the spawner sets)."""
    return client.containers.list(all=True, filters={"label": f"org.panosc.portal.user={username}"})


def remove_user_servers(client: docker.DockerClient, *usernames: str) -> None:
    """Remove these users' portal containers and home volumes: servers outlive the hub on
    purpose, so tests clean up after themselves."""
    for user in usernames:
        for container in portal_containers(client, user):
            container.remove(force=True)
        for volume in client.volumes.list(filters={"name": f"panosc-home-{user}"}):
            volume.remove(force=True)
