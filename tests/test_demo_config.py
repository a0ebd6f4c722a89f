"""The demo's portal.yaml as JupyterHub receives it, without starting anything.

The Docker demo used to leave the users' containers running after Ctrl-C: the Docker backend
keeps servers across a hub restart (``cleanup_servers=False``), and the demo inherited that.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from portal import render, settings
from portal.demo import run
from tests.support.paths import ROOT

DOCKER = {"backend": "docker", "docker": {"hub_connect_ip": "172.17.0.1", "hub_api_port": 18081}}


@pytest.fixture
def docker_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``demo --spawner docker``'s portal.yaml; the engine and image checks are skipped."""
    monkeypatch.setattr(run, "spawner_settings", lambda state, backend: (DOCKER, {}))
    return run.demo_settings(tmp_path, 8000, 8001, "docker")


def rendered(portal_yaml: dict, folder: Path) -> dict:
    return render.render_config(settings.parse(yaml.safe_dump(portal_yaml), base_dir=folder))


def test_the_docker_demo_stops_its_servers_when_it_stops(docker_demo, tmp_path) -> None:
    assert rendered(docker_demo, tmp_path)["JupyterHub"]["cleanup_servers"] is True


def test_a_sites_docker_hub_still_keeps_its_servers_across_a_restart(docker_demo, tmp_path) -> None:
    site = {**docker_demo, "extra_config": {}}
    assert rendered(site, tmp_path)["JupyterHub"]["cleanup_servers"] is False


def test_the_docker_demo_lists_every_shipped_course(docker_demo) -> None:
    shipped = sorted(p.parent.name for p in (ROOT / "notebooks").glob("*/course.yaml"))
    assert sorted(docker_demo["courses"]["sources"]) == shipped


def test_the_hub_and_the_proxy_never_get_the_same_internal_port(monkeypatch) -> None:
    """The kernel may offer a closed probe's port again: a second listener would collide."""
    offered = iter([40001, 40001, 40002])

    class Probe:
        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(run.socket, "socket", Probe)
    monkeypatch.setattr(run, "_HANDED_OUT", set())
    assert [run.ephemeral_port(), run.ephemeral_port()] == [40001, 40002]
