"""``PortalKubeSpawner``: one pod per server on Kubernetes, datasets mounted read-only by subPath.

The mount plan (:mod:`spawner.mounts`) becomes pod volumes, making the same choices as the
Docker backend's binds:

- ``~/datasets`` is a small in-memory ``emptyDir``, so nothing of an earlier session lingers;
- each storage root is *one* volume of the kind the site names for it (``hostPath``, ``nfs``
  or ``persistentVolumeClaim``: :attr:`PortalKubeSpawner.storage_volumes`), and each dataset
  is a read-only ``volumeMount`` of it whose ``subPath`` is the dataset's folder inside the
  root. The hub decided that folder on its own mount of the same storage, after resolving
  ``..`` and symlinks (:func:`spawner.mounts.resolve_location`); the kubelet checks again on
  the node and refuses a ``subPath`` whose symlinks leave the volume;
- ``datasets.json`` is the pod's own annotation, projected read-only by the downward API
  (:data:`MANIFEST_ANNOTATION` says why not a ConfigMap);
- processed areas are writable mounts of the processed root's volume.

Provenance: the pod writes its own record. A ``postStart`` hook runs the record program
(:mod:`spawner.provenance_record`, its text and the hub's facts in the hook's command, as the
Docker backend passes them to ``docker exec``) as jovyan when the container starts, and a
``preStop`` hook runs it again to add the end and the files saved: no exec through the API
server, no object beside the pod. The hooks never fail (a failing ``postStart`` would kill the
server) and are killed after :attr:`~spawner.provenance.ProvenanceRecorder.provenance_timeout`;
the pod's grace period leaves the ``preStop`` hook that long. The image digest is the one the
image reference pins (``name@sha256:...``): inside a pod nothing else tells which build runs.

Home is one PersistentVolumeClaim per user, shared by their named servers (a lab and a
desktop side by side). Images come only from the environments table, as kubespawner profiles.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path, PurePosixPath

from jupyterhub.spawner import SpawnException
from kubernetes_asyncio.client import (
    V1Affinity,
    V1Lifecycle,
    V1Pod,
    V1PodAffinity,
    V1PodAffinityTerm,
    V1Volume,
    V1VolumeMount,
)
from kubespawner import KubeSpawner
from kubespawner.slugs import is_valid_label, safe_slug
from kubespawner.utils import get_k8s_model
from traitlets import Dict, Float, Unicode, default

from portal.upstream import apply_kube_profile, log_name
from spawner.common import HOME, JOVYAN_GID, JOVYAN_UID, PortalSpawner, SpawnPlan
from spawner.course_library import SYSTEM_PYTHON
from spawner.environments import Environment
from spawner.mounts import DATASETS_DIR, MANIFEST_NAME, MountError, MountPlan
from spawner.options import SpawnRefused
from spawner.provenance import ProvenanceRecorder, program, program_arguments

LABEL_PREFIX = "portal.panosc.eu"
USER_LABEL = f"{LABEL_PREFIX}/user"

#: The pod annotation holding ``datasets.json``, which a downward API volume turns into the
#: file. A per-server ConfigMap would do the same with more moving parts: an object to create
#: before the pod and delete after it (or orphan when the hub dies in between), owner
#: references, and RBAC on configmaps. The annotation lives and dies with its pod.
MANIFEST_ANNOTATION = f"{LABEL_PREFIX}/datasets.json"

#: Kubernetes keeps at most 256 KiB of annotations per object; leave room for the others.
MAX_MANIFEST_BYTES = 200 * 1024

#: What a server reserves at least, whatever ``guarantee_fraction``: an idle JupyterLab
#: with its kernel takes about this much, so a node is never packed past what its servers
#: need just to stay up. Kubernetes copies the limits into missing requests, so some
#: request is always given.
MIN_CPU_GUARANTEE = 0.1
MIN_MEM_GUARANTEE = 256 << 20  # bytes

#: The scheduler's words for a node refused by a required pod affinity: "node(s) didn't
#: match pod affinity rules", or "... pod affinity/anti-affinity" before Kubernetes 1.20.
#: Not "pod anti-affinity rules": the portal sets no anti-affinity.
POD_AFFINITY_REFUSED = re.compile(r"didn't match pod affinity\b")

#: Shown on the spawn page when a pod cannot join the node of the user's other servers.
COLOCATION_CONFLICT = (
    "This server cannot start now: with this site's ReadWriteOnce homes all of a user's"
    " servers share one node, the one their home is attached to, and that node is full or"
    " of another kind than this environment needs (e.g. without a GPU). Stop your other"
    " server(s) and start this one again, or ask the site to use ReadWriteMany homes."
)

#: Why a ReadWriteOncePod home is refused: the setting's names in portal.yaml, the chart
#: and kubespawner.
READ_WRITE_ONCE_POD_REFUSED = (
    "Servers cannot start: this site gives homes the access mode ReadWriteOncePod"
    " (spawner.kube.home.access_modes in portal.yaml, singleuser.storage.accessModes in the"
    " Helm chart, KubeSpawner.storage_access_modes in a hub config), with which only one pod"
    " at a time may use a home, so a user's second server could never start. The site must"
    " use ReadWriteOnce or ReadWriteMany."
)


def pod_volumes(
    plan: MountPlan, storage_volumes: Mapping[str, dict], home: PurePosixPath = HOME
) -> tuple[list[dict], list[dict]]:
    """The pod volumes and container volumeMounts realising ``plan``; parents before children.

    ``storage_volumes`` maps a folder as the hub sees it to the volume source that holds it
    in a pod. Only the volumes this plan uses are listed, named ``storage-0``, ``storage-1``...
    in the order the plan first uses them, so the same plan always gives the same pod.
    """
    roots = sorted(
        ((Path(folder).resolve(), folder) for folder in storage_volumes),
        key=lambda root: len(root[0].parts),
        reverse=True,
    )
    volumes: list[dict] = [
        {"name": "datasets", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": "datasets-manifest",
            "downwardAPI": {
                "items": [
                    {
                        "path": MANIFEST_NAME,
                        "fieldRef": {"fieldPath": f"metadata.annotations['{MANIFEST_ANNOTATION}']"},
                    }
                ]
            },
        },
    ]
    mounts: list[dict] = [
        {"name": "datasets", "mountPath": str(home / DATASETS_DIR)},
        {
            "name": "datasets-manifest",
            "mountPath": str(home / DATASETS_DIR / MANIFEST_NAME),
            "subPath": MANIFEST_NAME,
            "readOnly": True,
        },
    ]
    used: dict[str, str] = {}
    for mount in plan.mounts:
        found = next(((b, f) for b, f in roots if mount.source.is_relative_to(b)), None)
        if found is None:
            raise MountError(
                f"{mount.source} is in no Kubernetes volume; PortalKubeSpawner.storage_volumes"
                f" covers: {', '.join(storage_volumes) or 'nothing'}"
            )
        base, folder = found
        name = used.setdefault(folder, f"storage-{len(used)}")
        volume_mount = {"name": name, "mountPath": str(home / mount.target)}
        inside = mount.source.relative_to(base)
        if inside.parts:  # a volume may hold exactly one folder, e.g. a per-proposal PVC
            volume_mount["subPath"] = str(inside)
        mounts.append({**volume_mount, "readOnly": mount.read_only})
    volumes += [{"name": name, **storage_volumes[folder]} for folder, name in used.items()]
    return volumes, mounts


def image_digest(image: str) -> str:
    """The digest an image reference pins (``registry/name:tag@sha256:...``), else empty."""
    _, at, digest = image.partition("@")
    return digest if at else ""


def hook_command(action: str, facts: dict, seconds: int) -> list[str]:
    """A lifecycle hook's command: the record program as jovyan with the image's system
    Python in isolated mode, killed after ``seconds``, and never a failure (kubelet kills a
    container whose ``postStart`` hook fails: a record is not worth a session)."""
    script = f'/usr/bin/timeout -s KILL {seconds} "$@"; exit 0'
    python = [SYSTEM_PYTHON, "-I", "-S", "-c", program(), *program_arguments(action, facts)]
    return ["/bin/sh", "-c", script, "panosc-provenance", *python]


class PortalKubeSpawner(ProvenanceRecorder, PortalSpawner, KubeSpawner):
    """Single-user pods in the environment's image, with exactly the approved datasets."""

    storage_volumes = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        config=True,
        help="""Folder as the hub sees it -> Kubernetes volume source holding it in a pod.

        One entry per storage root (the values of ``storage_roots``) and for the
        ``processed_root``, each a hostPath, an NFS export or a PersistentVolumeClaim, e.g.
        {"/gpfs/visitor": {"hostPath": {"path": "/gpfs/visitor", "type": "Directory"}},
         "/mnt/processed": {"nfs": {"server": "nfs.example.eu", "path": "/processed"}}}.
        The hub must see the same storage at these folders: it checks every dataset there.
        """,
    )
    image_registry = Unicode(
        "",
        config=True,
        help="Registry prefixed to the environments' images, e.g. registry.example.eu.",
    )
    profile_overrides = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        config=True,
        help="""Environment name -> extra kubespawner settings for its pods (a profile's
        ``kubespawner_override``), e.g. {"tomography": {"node_selector": {"gpu": "true"},
        "extra_resource_limits": {"nvidia.com/gpu": "1"}}}. They win over the resource
        preset, so a site can size an environment for its nodes. The profile list itself is
        built from the environments table: one profile per environment, named after it.
        """,
    )

    guarantee_fraction = Float(
        0.25,
        min=0.0,
        max=1.0,
        config=True,
        help="""Share of a server's CPU and memory limits reserved for it (its requests).

        Kubernetes places pods by their requests, and a pod given only limits requests all
        of them: a tomography server (4 CPU, 16G) would hold a node's whole share while it
        idles between reconstructions. With 0.25 it reserves 1 CPU and 4G and may use up
        to its limits when the node has room. Lower packs more servers per node, at the
        risk of memory pressure when many work at once; 1 reserves everything. At least
        0.1 CPU and 256M are reserved (never more than the limits). A profile override
        that sets ``cpu_guarantee`` or ``mem_guarantee`` wins.
        """,
    )

    @default("profile_list")
    def _default_profile_list(self) -> list[dict]:
        """One profile per environment of the table: its image, plus the site's overrides."""
        environments = self.environments
        unknown = sorted(set(self.profile_overrides) - set(environments))
        if unknown:
            self.log.warning(
                "profile_overrides name no environment: %s (environments: %s)",
                ", ".join(unknown),
                ", ".join(environments),
            )
        return [
            {
                "slug": env.name,
                "display_name": env.name,
                "description": env.description,
                "kubespawner_override": {
                    "image": self.image_for(env),
                    **self.profile_overrides.get(env.name, {}),
                },
            }
            for env in environments.values()
        ]

    @default("uid")
    def _default_uid(self) -> int:
        return JOVYAN_UID

    @default("gid")
    def _default_gid(self) -> int:
        return JOVYAN_GID

    @default("fs_gid")
    def _default_fs_gid(self) -> int:
        return JOVYAN_GID

    @default("pod_security_context")
    def _default_pod_security_context(self) -> dict:
        # OnRootMismatch: a big home is not chown'ed file by file at every start.
        return {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
            "fsGroupChangePolicy": "OnRootMismatch",
        }

    @default("container_security_context")
    def _default_container_security_context(self) -> dict:
        return {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }

    @default("common_labels")
    def _default_common_labels(self) -> dict[str, str]:
        return {
            "app.kubernetes.io/name": "panosc-portal",
            "app.kubernetes.io/managed-by": "kubespawner",
        }

    @default("pod_name_template")
    def _default_pod_name_template(self) -> str:
        return "panosc-{user_server}"

    @default("pvc_name_template")
    def _default_pvc_name_template(self) -> str:
        return "panosc-home-{username}"  # one home per user, shared by their servers

    @default("storage_pvc_ensure")
    def _default_storage_pvc_ensure(self) -> bool:
        return True

    @default("storage_capacity")
    def _default_storage_capacity(self) -> str:
        return "10Gi"

    @default("delete_pvc")
    def _default_delete_pvc(self) -> bool:
        return False  # deleting a user keeps their home; the hub needs no right to delete PVCs

    @default("volumes")
    def _default_volumes(self) -> dict[str, dict]:
        return {"home": {"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}}

    @default("volume_mounts")
    def _default_volume_mounts(self) -> dict[str, dict]:
        return {"home": {"name": "home", "mountPath": str(HOME)}}

    @default("notebook_dir")
    def _default_notebook_dir(self) -> str:
        return str(HOME)

    @default("delete_grace_period")
    def _default_delete_grace_period(self) -> int:
        """Long enough for the ``preStop`` hook to complete the record (kubespawner's 1 s
        is not), and the hook is killed at ``provenance_timeout``, so no longer than that."""
        return self.provenance_timeout + 5

    def record_home(self) -> str:
        return str(HOME)

    _spawn: SpawnPlan | None = None  # this start's plan and the pod volumes realising it
    _plan_volumes: tuple[list[dict], list[dict]] | None = None
    _pod_requested = False  # the portal's steps are done; the pod's own events follow
    _started = 0.0  # when this start began: the provenance record's start

    def image_for(self, environment: Environment) -> str:
        """The environment's image, from the site's registry when one is configured."""
        registry = self.image_registry.rstrip("/")
        return f"{registry}/{environment.image}" if registry else environment.image

    def start(self) -> asyncio.Future:
        """Kubespawner's start, from a clean slate: no plan or progress of an earlier start."""
        self._spawn, self._plan_volumes, self._pod_requested = None, None, False
        return super().start()

    async def load_user_options(self) -> None:
        """Decide what the pod gets; kubespawner calls this first thing in every start.

        Options come only through the portal's allow-list and the catalogue
        (:meth:`prepare_spawn`), never as a kubespawner ``profile`` sent by the browser: the
        environment the plan chose selects its profile. The hub's own storage is touched
        only in worker threads: a slow GPFS or NFS must not freeze the hub for everyone.
        """
        self._started = time.time()  # the session's start, as the Docker backend states it
        if "ReadWriteOncePod" in self.storage_access_modes:
            raise SpawnException(
                READ_WRITE_ONCE_POD_REFUSED, reason="configuration", status_code=500
            )
        spawn = await self.prepare_spawn()
        try:
            self._plan_volumes = await asyncio.to_thread(
                pod_volumes, spawn.mounts, self.storage_volumes
            )
        except MountError as e:
            raise SpawnException(str(e), reason="configuration", status_code=500) from e
        size = len(spawn.mounts.manifest_json().encode())
        if size > MAX_MANIFEST_BYTES:
            raise SpawnRefused(
                f"{len(spawn.datasets)} datasets are too many for one server: their"
                f" datasets.json would take {size // 1024} KiB of the pod's annotations, which"
                f" hold {MAX_MANIFEST_BYTES // 1024} KiB here; choose fewer datasets",
                400,
            )
        await asyncio.to_thread(create_writable_folders, spawn.mounts)
        self.cpu_limit = spawn.resources.cpu
        self.mem_limit = spawn.resources.memory
        try:
            apply_kube_profile(self, spawn.environment.name)
        except ValueError as e:
            raise SpawnException(str(e), reason="configuration", status_code=500) from e
        self.reserve_share(self.profile_overrides.get(spawn.environment.name, {}))
        self.default_url = spawn.default_url
        self._spawn = spawn
        self._pod_requested = True
        self.progress_event(f"Starting environment {spawn.environment.name} ({self.image})", 50)

    def reserve_share(self, overrides: Mapping[str, object]) -> None:
        """Request ``guarantee_fraction`` of the limits (the profile's, once applied), unless
        the environment's overrides name a guarantee themselves or remove the limit."""
        fraction = self.guarantee_fraction
        if "cpu_guarantee" not in overrides and self.cpu_limit:
            share = max(round(self.cpu_limit * fraction, 3), MIN_CPU_GUARANTEE)
            self.cpu_guarantee = min(share, self.cpu_limit)
        if "mem_guarantee" not in overrides and self.mem_limit:
            share = max(int(self.mem_limit * fraction), MIN_MEM_GUARANTEE)
            self.mem_guarantee = min(share, self.mem_limit)

    async def get_pod_manifest(self) -> V1Pod:
        """Kubespawner's pod, plus this spawn's datasets, labels and manifest.

        Added here rather than through the ``volumes`` and ``extra_labels`` traits because
        kubespawner formats those as templates, and dataset folders and titles are data,
        not templates.
        """
        pod = await super().get_pod_manifest()
        spawn, planned = self._spawn, self._plan_volumes
        if spawn is None or planned is None:
            raise RuntimeError("get_pod_manifest() before load_user_options()")
        volumes, mounts = planned
        pod.spec.volumes.extend(get_k8s_model(V1Volume, v) for v in volumes)
        pod.spec.containers[0].volume_mounts.extend(get_k8s_model(V1VolumeMount, m) for m in mounts)
        user = safe_slug(self.user.name, is_valid=is_valid_label)
        pod.metadata.labels.update(
            {
                USER_LABEL: user,
                f"{LABEL_PREFIX}/environment": spawn.environment.name,
                f"{LABEL_PREFIX}/server-type": spawn.options.server_type,
            }
        )
        pod.metadata.annotations.update(
            {
                f"{LABEL_PREFIX}/datasets": json.dumps([d.pid for d in spawn.datasets]),
                MANIFEST_ANNOTATION: spawn.mounts.manifest_json(),
            }
        )
        if "ReadWriteMany" not in self.storage_access_modes:
            colocate_with_user(pod, user)
        self.add_provenance_hooks(pod, spawn)
        return pod

    def add_provenance_hooks(self, pod: V1Pod, spawn: SpawnPlan) -> None:
        """The ``postStart`` and ``preStop`` hooks that write and complete the record, and a
        grace period that lets the second finish (:func:`hook_command`)."""
        facts = self.session_facts(spawn, self._started)
        digest = image_digest(self.image)
        facts.update(
            image=self.image,
            digest=digest,
            environment_description=f"Kubernetes pod image {self.image}"
            + ("" if digest else "; not pinned by a digest, so the build that ran is unknown"),
        )
        container = pod.spec.containers[0]
        if container.lifecycle is not None:
            self.log.warning(
                "%s: KubeSpawner.lifecycle_hooks replaced by the provenance hooks", log_name(self)
            )
        seconds = self.provenance_timeout
        container.lifecycle = get_k8s_model(
            V1Lifecycle,
            {
                "postStart": {"exec": {"command": hook_command("start", facts, seconds)}},
                "preStop": {"exec": {"command": hook_command("stop", facts, seconds)}},
            },
        )
        pod.spec.termination_grace_period_seconds = self.delete_grace_period

    async def progress(self) -> AsyncIterator[dict]:
        """The portal's steps (catalogue, mounts) as they happen, then the pod's events.

        A pod kept off every node by the ReadWriteOnce home's pod affinity
        (:func:`colocate_with_user`) would only show the scheduler's terse text until the
        start times out: the first such event is followed by what to do about it.
        """
        seen = 0
        async for event in PortalSpawner.progress(self):
            yield event
            seen += 1
            if self._pod_requested and seen >= len(self._events):
                break
        explained = "ReadWriteMany" in self.storage_access_modes  # no colocation, no conflict
        async for event in KubeSpawner.progress(self):
            yield event
            raw = event.get("raw_event") or {}
            if (
                not explained
                and raw.get("reason") == "FailedScheduling"
                and POD_AFFINITY_REFUSED.search(raw.get("message") or "")
            ):
                explained = True
                yield {"progress": event["progress"], "message": COLOCATION_CONFLICT}


def create_writable_folders(plan: MountPlan) -> None:
    """Create the processed areas through the hub's own mount, owned by the hub's uid.

    The hub runs as uid 1000, the servers' uid; a folder the kubelet created for a missing
    ``subPath`` would belong to root, and NFS with root squashing would refuse to create it.
    When the hub cannot create one either (an export read-only or squashing every user to
    nobody, GPFS ACLs), the user is told what they lose and the site what to change.
    """
    for mount in plan.mounts:
        if mount.read_only:
            continue
        try:
            mount.source.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            proposal = mount.target.parent.name
            raise SpawnException(
                f"Your server cannot start: the processed area of proposal {proposal} could"
                f" not be created, as the portal may not create the folder {mount.source}"
                f" ({e.strerror or e}). For the site's administrators: the hub runs as uid"
                f" {JOVYAN_UID}, gid {JOVYAN_GID}, and must be able to create folders in the"
                f" processed root {mount.source.parent}: its export must be writable by uid"
                f" {JOVYAN_UID} and not squashed to nobody (no NFS all_squash; GPFS ACLs and the"
                f" root folder's own permissions must let uid {JOVYAN_UID} write); or create"
                " each proposal's folder there beforehand, owned by"
                f" {JOVYAN_UID}:{JOVYAN_GID}.",
                reason="configuration",
                status_code=500,
            ) from e


def colocate_with_user(pod: V1Pod, user_label: str) -> None:
    """Schedule the pod beside the user's other servers, which share a ReadWriteOnce home.

    A ReadWriteOnce volume attaches to one node at a time: a second server elsewhere would
    wait forever for the home. A home that is ReadWriteMany needs no such rule.
    """
    term = get_k8s_model(
        V1PodAffinityTerm,
        {
            "labelSelector": {"matchLabels": {USER_LABEL: user_label}},
            "topologyKey": "kubernetes.io/hostname",
        },
    )
    affinity = pod.spec.affinity or V1Affinity()
    pod_affinity = affinity.pod_affinity or V1PodAffinity()
    required = pod_affinity.required_during_scheduling_ignored_during_execution or []
    pod_affinity.required_during_scheduling_ignored_during_execution = [*required, term]
    affinity.pod_affinity = pod_affinity
    pod.spec.affinity = affinity


__all__ = ["PortalKubeSpawner", "pod_volumes"]
