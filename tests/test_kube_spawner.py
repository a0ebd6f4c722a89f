"""PortalKubeSpawner: the pod a cluster would be asked to run, built from real data.

No Kubernetes API server can run on these machines, so no pod is created here. What a
cluster would receive is built and checked instead, with nothing mocked but the cluster's
address: real sample NeXus data (``portal.demo.sampledata``), the real LocalCatalogue, a
real JupyterHub ``User`` (in an in-memory hub database), and kubespawner's own
``get_pod_manifest()``, validated with ``kubernetes-validate --strict``. kubespawner loads a
kube config when a spawner is made, so the tests name one whose API server (127.0.0.1:9)
answers nothing; every step tested here happens before kubespawner would first call it,
which is also why a refused spawn is refused before anything reaches a cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.spawner import SpawnException
from kubespawner import KubeSpawner
from traitlets import TraitError
from traitlets.config import Config

from portal.catalogue import PortalCatalogue
from portal.render import render_config
from portal.settings import SettingsError, load, parse
from spawner import kube, mounts
from spawner.environments import load_environments
from spawner.kube import PortalKubeSpawner
from spawner.options import SpawnRefused
from tests.support.helm import CI, hub_portal_yaml, render, selector
from tests.support.kube import (
    CEO2,
    ESCAPE,
    HOME,
    TOMO,
    XRF,
    Hubs,
    build_facility,
    pod_of,
    site_config,
    validate,
    without_cluster,
)


@pytest.fixture(scope="module")
def facility(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_facility(tmp_path_factory.mktemp("facility"))


@pytest.fixture(scope="module", autouse=True)
def no_cluster(facility: Path) -> Iterator[None]:
    with without_cluster(facility):
        yield


@pytest.fixture
def hubs(facility: Path) -> Iterator[Hubs]:
    yield Hubs(site_config(facility))
    PortalCatalogue.clear_instance()


def dataset_mounts(pod: dict) -> dict[str, dict]:
    container = pod["spec"]["containers"][0]
    return {
        m["mountPath"]: m
        for m in container["volumeMounts"]
        if m["mountPath"].startswith(f"{HOME}/datasets/")
    }


@pytest.mark.parametrize(
    ("server_type", "environment"), [("desktop", "desktop"), ("lab", "xrf")], ids=["desktop", "lab"]
)
async def test_two_datasets_mounted_read_only_by_subpath(
    hubs: Hubs, facility: Path, tmp_path: Path, server_type: str, environment: str
) -> None:
    spawner = hubs.spawner("alice", server_type, {"type": server_type, "datasets": [XRF, CEO2]})
    pod = await pod_of(spawner)
    validate(pod, tmp_path)

    assert dataset_mounts(pod) == {
        f"{HOME}/datasets/datasets.json": {
            "name": "datasets-manifest",
            "mountPath": f"{HOME}/datasets/datasets.json",
            "subPath": "datasets.json",
            "readOnly": True,
        },
        f"{HOME}/datasets/ES1001/ceo2_powder_0001": {
            "name": "storage-0",
            "mountPath": f"{HOME}/datasets/ES1001/ceo2_powder_0001",
            "subPath": CEO2,
            "readOnly": True,
        },
        f"{HOME}/datasets/MA1234/xrf_map_0001": {
            "name": "storage-0",
            "mountPath": f"{HOME}/datasets/MA1234/xrf_map_0001",
            "subPath": XRF,
            "readOnly": True,
        },
        f"{HOME}/datasets/ES1001/processed": {
            "name": "storage-1",
            "mountPath": f"{HOME}/datasets/ES1001/processed",
            "subPath": "ES1001",
            "readOnly": False,
        },
        f"{HOME}/datasets/MA1234/processed": {
            "name": "storage-1",
            "mountPath": f"{HOME}/datasets/MA1234/processed",
            "subPath": "MA1234",
            "readOnly": False,
        },
    }
    assert (facility / "processed" / "MA1234").is_dir()  # made by the hub, owned by uid 1000
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["storage-0"]["hostPath"] == {"path": "/gpfs/visitor", "type": "Directory"}
    assert volumes["storage-1"]["nfs"] == {"server": "nfs.example.eu", "path": "/processed"}
    assert volumes["datasets"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert volumes["home"]["persistentVolumeClaim"] == {"claimName": "panosc-home-alice"}
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"][:2] == [
        {"name": "home", "mountPath": HOME},
        {"name": "datasets", "mountPath": f"{HOME}/datasets"},
    ]

    annotations = pod["metadata"]["annotations"]
    manifest = json.loads(annotations["portal.panosc.eu/datasets.json"])
    assert {d["pid"]: d["path"] for d in manifest["datasets"]} == {
        CEO2: "datasets/ES1001/ceo2_powder_0001",
        XRF: "datasets/MA1234/xrf_map_0001",
    }
    assert json.loads(annotations["portal.panosc.eu/datasets"]) == [XRF, CEO2]  # as asked
    field = volumes["datasets-manifest"]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    assert field == "metadata.annotations['portal.panosc.eu/datasets.json']"

    assert container["securityContext"] == {
        "runAsUser": 1000,
        "runAsGroup": 100,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["spec"]["automountServiceAccountToken"] is False

    assert pod["metadata"]["name"] == f"panosc-alice--{server_type}"
    labels = pod["metadata"]["labels"]
    assert labels["portal.panosc.eu/environment"] == environment
    assert labels["portal.panosc.eu/server-type"] == server_type
    assert labels["portal.panosc.eu/user"] == "alice"
    assert container["image"] == load_environments()[environment].image
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["JUPYTERHUB_DEFAULT_URL"] == ("/desktop" if server_type == "desktop" else "/lab")
    # A ReadWriteOnce home attaches to one node: the user's servers go there together.
    [term] = pod["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term == {
        "labelSelector": {"matchLabels": {"portal.panosc.eu/user": "alice"}},
        "topologyKey": "kubernetes.io/hostname",
    }


@pytest.mark.parametrize(
    ("options", "status", "message"),
    [
        ({"datasets": [TOMO]}, 403, "was not found, or you do not have access to it"),
        ({"datasets": ["../../etc"]}, 403, "'../../etc' was not found"),
        ({"datasets": [ESCAPE]}, 403, "escape_0001' was not found"),  # never indexed
        (
            {"datasets": [XRF], "profile": "tomography"},
            400,
            "unknown server option(s) profile; allowed: type, environment, datasets, resources",
        ),
        ({"image": "evil/root:latest"}, 400, "unknown server option(s) image"),
    ],
    ids=["embargoed", "traversal", "symlink-escape", "kubespawner-profile", "image"],
)
async def test_forged_requests_are_refused_before_any_pod(
    hubs: Hubs, options: dict, status: int, message: str
) -> None:
    spawner = hubs.spawner("alice", "forged", options)
    with pytest.raises(SpawnRefused) as refused:
        await spawner.start()
    assert refused.value.status_code == status
    assert message in refused.value.message
    assert spawner._spawn is None  # no pod was ever built


async def test_a_default_spawn_skips_an_unsafe_dataset_but_mounts_the_rest(hubs: Hubs) -> None:
    pod = await pod_of(hubs.spawner("alice", "everything", {"type": "lab"}))
    mounted = {m["subPath"] for m in dataset_mounts(pod).values() if m["readOnly"]}
    assert ESCAPE not in mounted and TOMO not in mounted
    assert {XRF, CEO2, "MA1234/ID21/nexus_tour_0001"} <= mounted


async def test_a_root_without_a_volume_is_a_clear_error(facility: Path) -> None:
    config = site_config(facility)
    del config.PortalKubeSpawner.storage_volumes[str(facility / "processed")]
    spawner = Hubs(config).spawner("alice", "lab", {"datasets": [XRF]})
    with pytest.raises(SpawnException) as failed:
        await spawner.load_user_options()
    assert failed.value.status_code == 500
    assert "is in no Kubernetes volume" in failed.value.message
    PortalCatalogue.clear_instance()


async def test_too_many_datasets_for_one_pod_are_refused(
    hubs: Hubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube, "MAX_MANIFEST_BYTES", 500)  # two datasets' manifest is bigger
    with pytest.raises(SpawnRefused) as refused:
        await hubs.spawner("alice", "big", {"datasets": [XRF, CEO2]}).load_user_options()
    assert refused.value.status_code == 400
    assert "2 datasets are too many for one server" in refused.value.message


async def test_profiles_come_from_the_environments_table(facility: Path, tmp_path: Path) -> None:
    config = site_config(facility)
    config.PortalKubeSpawner.image_registry = "registry.example.eu/"
    config.PortalKubeSpawner.profile_overrides = {
        "tomography": {
            "node_selector": {"gpu": "true"},
            "extra_resource_limits": {"nvidia.com/gpu": "1"},
        }
    }
    spawner = Hubs(config).spawner("alice", "tomo", {"environment": "tomography"})
    environments = load_environments()
    assert [p["slug"] for p in spawner.profile_list] == list(environments)
    pod = await pod_of(spawner)
    validate(pod, tmp_path)
    container = pod["spec"]["containers"][0]
    assert container["image"] == f"registry.example.eu/{environments['tomography'].image}"
    assert pod["spec"]["nodeSelector"] == {"gpu": "true"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["metadata"]["labels"]["portal.panosc.eu/environment"] == "tomography"
    PortalCatalogue.clear_instance()


async def events(spawner: PortalKubeSpawner) -> AsyncIterator[dict]:
    async for event in spawner.progress():
        yield event


async def test_progress_shows_the_portal_steps_then_hands_over(hubs: Hubs) -> None:
    spawner = hubs.spawner("alice", "progress", {"datasets": [XRF]})
    spawner.events_enabled = False  # kubespawner's own events come from the cluster
    await spawner.load_user_options()
    messages = [e["message"] async for e in events(spawner)]
    assert messages == [
        "Checking access to 1 dataset(s)",
        "Mounting 1 dataset(s) read-only",
        f"Starting environment xrf ({load_environments()['xrf'].image})",
    ]


def scheduler_event(pod: str, message: str, uid: str) -> dict:
    """A FailedScheduling event as the cluster's event reflector holds it."""
    return {
        "metadata": {"uid": uid},
        "involvedObject": {"kind": "Pod", "name": pod},
        "reason": "FailedScheduling",
        "type": "Warning",
        "lastTimestamp": "2025-03-01T10:00:00Z",
        "eventTime": None,
        "message": message,
    }


AFFINITY_CONFLICT = (
    "0/3 nodes are available: 1 node(s) didn't match pod affinity rules, 2 node(s) didn't"
    " match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption"
    " is not helpful for scheduling."
)
NO_ROOM = (
    "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available:"
    " 3 No preemption victims found for incoming pod."
)


@pytest.mark.parametrize(
    ("scheduler_says", "explained"),
    [(AFFINITY_CONFLICT, True), (NO_ROOM, False)],
    ids=["beside-another-server", "no-room"],
)
async def test_a_pod_that_cannot_join_the_users_other_server_says_why(
    hubs: Hubs, monkeypatch: pytest.MonkeyPatch, scheduler_says: str, explained: bool
) -> None:
    """A GPU environment cannot go beside a lab on a CPU node (ReadWriteOnce home): the
    spawn page says so in words, after Kubernetes' own text; other failures get no such
    words. The cluster's events are faked where kubespawner reads them, its reflector."""
    spawner = hubs.spawner("alice", "tomo", {"environment": "tomography"})
    await spawner.load_user_options()
    reflector = SimpleNamespace(
        events=[scheduler_event(spawner.pod_name, scheduler_says, uid) for uid in "ab"],  # a retry
        first_load_future=asyncio.get_running_loop().create_future(),
    )
    reflector.first_load_future.set_result(None)
    monkeypatch.setitem(KubeSpawner.reflectors, spawner._get_reflector_key("events"), reflector)
    spawner._start_future = asyncio.get_running_loop().create_future()
    spawner._start_future.set_result(None)  # the start timeout: progress reads one last time

    messages = [e["message"] async for e in events(spawner)][3:]  # after the portal's steps

    assert messages[0].endswith(f"[Warning] {scheduler_says}")
    explanations = [m for m in messages if "ReadWriteOnce" in m]
    if not explained:
        assert explanations == []
        return
    assert messages[1] == explanations[0] and len(explanations) == 1  # once, beside the cause
    for words in (
        "that node is full or of another kind than this environment needs",
        "all of a user's servers share one node",
        "Stop your other server(s) and start this one again",
        "ReadWriteMany homes",
    ):
        assert words in explanations[0]


async def test_read_write_once_pod_homes_are_refused(facility: Path) -> None:
    """A ReadWriteOncePod home admits one pod: a user's second server could never start."""
    config = site_config(facility)
    config.PortalKubeSpawner.storage_access_modes = ["ReadWriteOncePod"]
    spawner = Hubs(config).spawner("alice", "lab", {"datasets": [XRF]})
    with pytest.raises(SpawnException) as refused:
        await spawner.start()
    assert refused.value.status_code == 500
    message = refused.value.message
    assert "ReadWriteOncePod" in message
    assert "spawner.kube.home.access_modes" in message  # portal.yaml
    assert "storage_access_modes" in message  # the trait, for hand-written configs
    assert "ReadWriteOnce or ReadWriteMany" in message
    assert spawner._spawn is None  # refused before the catalogue or any pod
    PortalCatalogue.clear_instance()


@pytest.mark.parametrize(
    ("options", "fraction", "requests"),
    [
        ({"environment": "tomography"}, None, {"cpu": 1.0, "memory": 4 << 30}),  # 4 CPU, 16G
        ({"environment": "tomography"}, 0.5, {"cpu": 2.0, "memory": 8 << 30}),
        ({"resources": "small"}, 0.01, {"cpu": 0.1, "memory": 256 << 20}),  # at least
    ],
    ids=["default-quarter", "half", "floor"],
)
async def test_a_server_reserves_a_fraction_of_its_limits(
    facility: Path, tmp_path: Path, options: dict, fraction: float | None, requests: dict
) -> None:
    """Kubernetes schedules by requests: a tomography server must not reserve a whole
    node's 4 CPU and 16 GB while it idles, yet keeps them as its limits."""
    config = site_config(facility)
    if fraction is not None:
        config.PortalKubeSpawner.guarantee_fraction = fraction
    pod = await pod_of(Hubs(config).spawner("alice", "sized", options))
    validate(pod, tmp_path)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"] == requests
    preset = {"cpu": 4.0, "memory": 16 << 30} if "environment" in options else None
    assert resources["limits"] == (preset or {"cpu": 1.0, "memory": 2 << 30})
    PortalCatalogue.clear_instance()


async def test_the_fraction_is_a_fraction(facility: Path) -> None:
    config = site_config(facility)
    config.PortalKubeSpawner.guarantee_fraction = 1.5
    with pytest.raises(TraitError, match="guarantee_fraction"):
        Hubs(config).spawner("alice", "lab", {})
    PortalCatalogue.clear_instance()


@pytest.fixture
def read_only_processed(tmp_path: Path) -> Iterator[Path]:
    """A processed root on a read-only filesystem: mkdir in it fails (EROFS) even for root,
    as it fails for the hub's uid 1000 on an export squashed to nobody or closed by ACLs."""
    root = tmp_path / "processed"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


async def test_a_processed_area_the_hub_cannot_create_says_what_to_fix(
    facility: Path, read_only_processed: Path
) -> None:
    config = site_config(facility)
    config.PortalSpawner.processed_root = str(read_only_processed)
    config.PortalKubeSpawner.storage_volumes[str(read_only_processed)] = {
        "nfs": {"server": "nfs.example.eu", "path": "/processed"}
    }
    spawner = Hubs(config).spawner("alice", "lab", {"datasets": [XRF]})
    with pytest.raises(SpawnException) as failed:
        await spawner.start()
    message = failed.value.message
    assert f"{read_only_processed / 'MA1234'}" in message  # the folder
    assert "Read-only file system" in message  # what the storage said
    assert "processed area of proposal MA1234" in message  # what the user loses
    for fix in (  # what the site's administrators must change
        f"create folders in the processed root {read_only_processed}",
        "writable by uid 1000",
        "not squashed to nobody",
        "owned by 1000:100",
    ):
        assert fix in message
    PortalCatalogue.clear_instance()


SLOW = 1.0  # seconds one storage call takes in the tests below


def slow_once(call: Callable, busy: threading.Event) -> Callable:
    """``call``, whose first use takes :data:`SLOW` seconds, with ``busy`` set meanwhile."""
    slowed: list[bool] = []

    def slowly(*args: Any, **kwargs: Any) -> Any:
        if slowed:
            return call(*args, **kwargs)
        slowed.append(True)
        busy.set()
        try:
            time.sleep(SLOW)
            return call(*args, **kwargs)
        finally:
            busy.clear()

    return slowly


@pytest.mark.parametrize(
    ("slow", "options"),
    [
        ("dataset-check", {"type": "lab"}),  # every dataset of the user, before planning
        ("dataset-stat", {"datasets": [XRF]}),  # plan_mounts identifies each dataset folder
        ("processed-mkdir", {"datasets": [XRF]}),  # the processed area, made by the hub
    ],
)
async def test_slow_storage_does_not_freeze_the_hub(
    facility: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slow: str,
    options: dict,
) -> None:
    """While GPFS or NFS answers slowly, the hub keeps serving everyone else.

    Slow storage is stood in for by monkeypatching the one filesystem call to sleep for
    :data:`SLOW` seconds before doing its work: the check of a dataset's location
    (``resolve_location``), the stat of its folder in ``plan_mounts`` (``identity_of``), or
    the ``mkdir`` of a processed area. A coroutine ticking every 50 ms stands for the hub's
    other work (its /hub/health probe, other users' pages): it must keep ticking while
    that call is in progress, which it cannot if the call runs on the event loop.
    """
    processed = tmp_path / "processed"
    processed.mkdir()
    config = site_config(facility)
    config.PortalSpawner.processed_root = str(processed)
    config.PortalKubeSpawner.storage_volumes[str(processed)] = {
        "nfs": {"server": "nfs.example.eu", "path": "/processed"}
    }
    busy = threading.Event()
    if slow == "dataset-check":
        monkeypatch.setattr(mounts, "resolve_location", slow_once(mounts.resolve_location, busy))
    elif slow == "dataset-stat":
        monkeypatch.setattr(mounts, "identity_of", slow_once(mounts.identity_of, busy))
    else:
        real_mkdir, slow_mkdir = os.mkdir, slow_once(os.mkdir, busy)
        target = str(processed / "MA1234")

        def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            (slow_mkdir if str(path) == target else real_mkdir)(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    spawner = Hubs(config).spawner("alice", "lab", options)
    ticks_while_busy = 0
    planned = False

    async def ticker() -> None:
        nonlocal ticks_while_busy
        while not planned:
            await asyncio.sleep(0.05)
            ticks_while_busy += busy.is_set()

    ticking = asyncio.create_task(ticker())
    try:
        await spawner.load_user_options()
    finally:
        planned = True
        await ticking
    assert ticks_while_busy >= 5  # 20 expected in a second; 0 if the loop were blocked
    assert (processed / "MA1234").is_dir()
    assert any(m.pid == XRF for m in spawner._spawn.mounts.mounts)  # and the spawn went on
    PortalCatalogue.clear_instance()


async def test_the_chart_config_drives_the_spawner(facility: Path, tmp_path: Path) -> None:
    """The hub's config as the chart renders it makes pods its NetworkPolicy selects."""
    data = str(facility / "data")
    roots = [{"prefix": data, "path": data, "volume": {"hostPath": {"path": data}}}]
    objects = render(
        CI / "minimal-values.yaml",
        f"portal.storage.roots={json.dumps(roots)}",
        f"portal.catalogue={json.dumps({'backend': 'local', 'local': {'data_root': data}})}",
        set_json=True,
    )
    path = tmp_path / "portal.yaml"
    path.write_text(hub_portal_yaml(objects))
    config = Config(render_config(load(path)))
    config.LocalCatalogue.index_path = str(facility / "catalogue.sqlite")  # not the pod's state
    pod = await pod_of(Hubs(config).spawner("alice", "lab", {"datasets": [XRF]}))
    validate(pod, tmp_path)
    policy = next(
        o
        for o in objects
        if o["kind"] == "NetworkPolicy"
        and o["spec"]["podSelector"]["matchLabels"] == selector("singleuser-server")
    )
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    mounts = dataset_mounts(pod)
    assert mounts[f"{HOME}/datasets/MA1234/xrf_map_0001"]["subPath"] == XRF
    PortalCatalogue.clear_instance()


KUBE_YAML = """\
auth: {issuer: https://login.example.eu/realms/umbrella, client_id: portal}
catalogue: {backend: scicat, scicat: {url: https://scicat.example.eu}}
spawner:
  backend: kube
  storage_roots: {/data/visitor: /gpfs/visitor}
  processed_root: /mnt/processed
  kube:
    storage_volumes:
      /gpfs/visitor: {hostPath: {path: /gpfs/visitor}}
      /mnt/processed: {nfs: {server: nfs.example.eu, path: /processed}}
"""


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            ("server: nfs.example.eu", "serverr: nfs.example.eu"),
            "portal.yaml:10: spawner.kube.storage_volumes./mnt/processed.nfs: unknown key"
            " 'serverr'; valid keys here: server, path, readOnly",
        ),
        (
            (
                "{hostPath: {path: /gpfs/visitor}}",
                "{hostPath: {path: /a}, nfs: {server: s, path: /b}}",
            ),
            "portal.yaml:9: spawner.kube.storage_volumes./gpfs/visitor: a storage volume is"
            " exactly one of hostPath, nfs, persistentVolumeClaim; got hostPath, nfs",
        ),
        (
            ("      /mnt/processed: {nfs: {server: nfs.example.eu, path: /processed}}\n", ""),
            "portal.yaml:3: spawner: kube.storage_volumes holds no volume for /mnt/processed",
        ),
    ],
    ids=["unknown-key", "two-kinds", "root-without-volume"],
)
def test_portal_yaml_kube_section_errors_name_the_line(
    change: tuple[str, str], problem: str
) -> None:
    parse(KUBE_YAML)  # the unchanged file is valid
    with pytest.raises(SettingsError) as invalid:
        parse(KUBE_YAML.replace(*change))
    assert any(p.startswith(problem) for p in invalid.value.problems), invalid.value.problems
