"""Kubernetes sessions record their provenance through the pod's own lifecycle hooks.

No API server can run here (see :mod:`tests.support.kube`, whose cluster-less site these
tests share with :mod:`tests.test_kube_spawner`). So the pod manifest kubespawner would send
is built and checked, and then
its hooks' exact commands are run for real, as kubelet would run them, in a container of the
real environment image on the Docker engine: as jovyan, with the home and the processed areas
mounted where the pod mounts them. The attacks of the Docker provenance tests (links out of
the home, a flood of scripts, a planted ``provenance`` link) are run against these hooks.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from spawner import provenance_record
from spawner.environments import load_environments
from spawner.provenance import read_records
from tests.support.docker_support import engine, ensure_images
from tests.support.kube import (
    CEO2,
    HOME,
    XRF,
    Hubs,
    build_facility,
    pod_of,
    site_config,
    validate,
    without_cluster,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_facility(tmp_path_factory.mktemp("facility"))


@pytest.fixture(scope="module", autouse=True)
def no_cluster(facility: Path) -> Iterator[None]:
    with without_cluster(facility):
        yield


@pytest.fixture(scope="module")
def xrf_image() -> tuple[str, str]:
    """The xrf environment's image, and the same image pinned by its digest as Docker has it
    (its Id: a local build has no registry digest)."""
    ensure_images("xrf")
    image = load_environments()["xrf"].image
    return image, engine().images.get(image).id


@pytest.fixture
def hubs(facility: Path, xrf_image: tuple[str, str]) -> Iterator[Hubs]:
    from portal.catalogue import PortalCatalogue

    config = site_config(facility)
    image, digest = xrf_image
    config.PortalKubeSpawner.profile_overrides = {"xrf": {"image": f"{image}@{digest}"}}
    yield Hubs(config)
    PortalCatalogue.clear_instance()


async def hooks_of(hubs: Hubs, facility: Path, tmp_path: Path, server: str) -> dict:
    """The pod of alice's lab with XRF and CEO2, validated; its container's lifecycle."""
    spawner = hubs.spawner("alice", server, {"type": "lab", "datasets": [XRF, CEO2]})
    pod = await pod_of(spawner)
    validate(pod, tmp_path)
    assert pod["spec"]["terminationGracePeriodSeconds"] == spawner.provenance_timeout + 5
    assert spawner.delete_grace_period == spawner.provenance_timeout + 5  # kubespawner's delete
    lifecycle = pod["spec"]["containers"][0]["lifecycle"]
    return {k: v["exec"]["command"] for k, v in lifecycle.items()}


@contextmanager
def pod_container(image: str, home: Path, processed: Path) -> Iterator:
    """A container of ``image`` as the pod's: jovyan, the home, the two processed areas."""
    home.mkdir(exist_ok=True)
    os.chown(home, 1000, 100)
    for proposal in ("ES1001", "MA1234"):
        os.chown(processed / proposal, 1000, 100)
    volumes = {str(home): {"bind": HOME, "mode": "rw"}}
    for proposal in ("ES1001", "MA1234"):
        target = f"{HOME}/datasets/{proposal}/processed"
        volumes[str(processed / proposal)] = {"bind": target, "mode": "rw"}
    box = engine().containers.run(
        image,
        ["sleep", "infinity"],
        user="1000:100",
        volumes=volumes,
        network_mode="none",
        detach=True,
        remove=True,
    )
    try:
        yield box
    finally:
        box.kill()


def hook(box, command: list[str]) -> float:
    """Run a hook's command as kubelet does (in the container, as its user); its seconds."""
    started = time.monotonic()
    code, out = box.exec_run(command, user="1000:100")
    assert code == 0, out  # a failing postStart hook would kill the server
    return time.monotonic() - started


def shell(box, script: str) -> None:
    code, out = box.exec_run(["sh", "-c", script], user="1000:100", workdir=HOME)
    assert code == 0, out


async def test_the_pod_hooks_record_the_session_and_the_files_saved_in_it(
    hubs: Hubs, facility: Path, tmp_path: Path, xrf_image: tuple[str, str]
) -> None:
    before = time.time()
    hooks = await hooks_of(hubs, facility, tmp_path, "prov")
    image, digest = xrf_image
    area = facility / "processed" / "ES1001"  # alice's first mounted proposal, sorted
    known = {r.path for r in read_records(area)}
    with pod_container(image, tmp_path / "home", facility / "processed") as box:
        hook(box, hooks["postStart"])
        [record] = [r for r in read_records(area) if r.path not in known]
        assert {pid for pid, _ in record.datasets} == {XRF, CEO2}
        assert all(title for _, title in record.datasets)
        assert (record.image, record.digest) == (f"{image}@{digest}", digest)
        assert record.environment == "xrf" and record.server_name == "prov"
        started = time.mktime(time.strptime(record.started, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        assert int(before) <= started <= time.time() and record.stopped is None
        assert (record.path / "ro-crate-metadata.json").stat().st_uid == 1000  # jovyan's
        notebook = '{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}\n'
        shell(
            box,
            f"printf '%s' '{notebook}' > analysis.ipynb"
            " && ln -s /etc/shadow shadow.py && ln -s /etc etc-link"
            " && mkdir -p /tmp/outside && echo secret > /tmp/outside/secret.py"
            " && ln -s /tmp/outside/secret.py theirs.py",
        )
        hook(box, hooks["preStop"])
    [record] = [r for r in read_records(area) if r.path not in known]
    assert record.stopped is not None and record.stopped >= record.started
    assert dict(record.files) == {"analysis.ipynb": hashlib.sha256(notebook.encode()).hexdigest()}


async def test_a_flood_of_scripts_is_capped_within_the_grace_period(
    hubs: Hubs, facility: Path, tmp_path: Path, xrf_image: tuple[str, str]
) -> None:
    hooks = await hooks_of(hubs, facility, tmp_path, "flood")
    area = facility / "processed" / "ES1001"
    known = {r.path for r in read_records(area)}
    count = provenance_record.MAX_FILES + 200
    with pod_container(xrf_image[0], tmp_path / "home", facility / "processed") as box:
        hook(box, hooks["postStart"])
        shell(box, f"mkdir flood && cd flood && seq {count} | sed 's/$/.py/' | xargs touch")
        took = hook(box, hooks["preStop"])
    assert took < 60  # the default provenance_timeout, within the pod's grace period
    [record] = [r for r in read_records(area) if r.path not in known]
    assert len(record.files) == provenance_record.MAX_FILES
    assert record.capped == f"more than {provenance_record.MAX_FILES} files"


async def test_a_planted_provenance_link_is_not_written_through_nor_fails_the_pod(
    hubs: Hubs, facility: Path, tmp_path: Path, xrf_image: tuple[str, str]
) -> None:
    """Attack: a fellow member of ES1001 replaced ``provenance`` in the shared processed area
    with a link. Neither hook writes through it, and neither fails (kubelet would kill the
    server for a failed postStart)."""
    hooks = await hooks_of(hubs, facility, tmp_path, "planted")
    area = facility / "processed" / "ES1001"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, 1000, 100)
    moved = tmp_path / "moved-provenance"
    if (area / "provenance").exists():
        (area / "provenance").rename(moved)
    (area / "provenance").symlink_to(elsewhere, target_is_directory=True)
    try:
        with pod_container(xrf_image[0], tmp_path / "home", facility / "processed") as box:
            hook(box, hooks["postStart"])
            hook(box, hooks["preStop"])
    finally:
        (area / "provenance").unlink()
        if moved.exists():
            moved.rename(area / "provenance")
    assert list(elsewhere.iterdir()) == []
