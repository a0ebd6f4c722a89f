"""``PortalDockerSpawner``: one container per server, datasets bind-mounted read-only.

The mount plan (:mod:`spawner.mounts`) becomes Docker mounts: a small tmpfs at
``~/datasets`` (so nothing of an earlier session lingers there), one read-only bind per
approved dataset inside it, the hub-written ``datasets.json`` bound read-only, and
writable processed areas when configured. Home is a per-user named volume shared by the
user's lab and desktop servers. Images come only from the environments table.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import docker
from docker.errors import DockerException, ImageNotFound
from docker.types import Mount
from dockerspawner import DockerSpawner
from traitlets import Integer, Unicode, default

from portal.upstream import log_name
from spawner.common import (
    HOME,
    JOVYAN_GID,
    JOVYAN_UID,
    PortalSpawner,
    SpawnPlan,
    until_answering,
)
from spawner.course_delivery import STAGING
from spawner.course_library import (
    SYSTEM_PYTHON,
    CourseLibrary,
    CourseUnavailable,
    course_archive,
    course_of_server,
    delivery_command,
    read_sync_report,
)
from spawner.docker_network import NetworkError, ensure_user_network, guard_host
from spawner.mounts import DATASETS_DIR, MANIFEST_NAME, MountError, MountPlan, verify_mount
from spawner.options import SpawnRefused
from spawner.provenance import ProvenanceRecorder, program

LABEL_PREFIX = "org.panosc.portal"


def docker_mounts(plan: MountPlan, manifest: Path, home: PurePosixPath = HOME) -> list[Mount]:
    """The Docker mounts realising ``plan`` under ``home``; parents before children."""
    mounts = [
        Mount(str(home / DATASETS_DIR), None, type="tmpfs", tmpfs_size=1 << 20, tmpfs_mode=0o755),
        Mount(str(home / DATASETS_DIR / MANIFEST_NAME), str(manifest), type="bind", read_only=True),
    ]
    for m in plan.mounts:
        mounts.append(
            Mount(str(home / m.target), str(m.source), type="bind", read_only=m.read_only)
        )
    return mounts


#: Where the hub signals, inside a new container, that its mounts were verified.
GATE = "/tmp/.panosc-mounts-verified"


def gated(command: list[str], seconds: float = 60) -> list[str]:
    """``command``, started only once the hub has opened the gate (within ``seconds``).

    Nothing of the user (their home's startup files, their kernels) runs before the hub
    has checked what the container mounts.
    """
    ticks = max(1, int(seconds * 20))
    script = (
        f"i=0; while [ ! -e {GATE} ]; do i=$((i+1)); [ $i -gt {ticks} ] && exit 75;"
        ' sleep 0.05; done; exec "$@"'
    )
    return ["sh", "-c", script, "panosc-gate", *command]


def identity_command(plan: MountPlan, home: PurePosixPath = HOME) -> list[str]:
    """The command that prints, inside a container, device and inode of each dataset mount."""
    targets = (str(home / m.target) for m in plan.dataset_mounts)
    return ["/usr/bin/stat", "-c", "%d %i", "--", *targets]


def check_mounted(plan: MountPlan, code: int, out: bytes, err: bytes) -> None:
    """Refuse (:class:`MountError`) unless :func:`identity_command` saw the planned folders.

    A bind mount keeps the device and inode of its source, so inside the container each
    dataset's mount point must be exactly what :func:`spawner.mounts.identity_of` recorded.
    """
    fields = out.decode(errors="replace").split()
    if code or len(fields) != 2 * len(plan.dataset_mounts):
        problem = err.decode(errors="replace").strip()[-300:] or f"exit code {code}"
        raise MountError(f"cannot check the mounted datasets inside the server: {problem}")
    for i, mount in enumerate(plan.dataset_mounts):
        verify_mount(mount, (int(fields[2 * i]), int(fields[2 * i + 1])))


#: What a command the hub runs in a user's container may print (each of output and errors).
EXEC_OUTPUT_LIMIT = 1 << 20


def exec_bounded(
    api: docker.APIClient, container: str, command: list[str], user: str, seconds: float
) -> tuple[int, bytes, bytes]:
    """Run ``command`` in a user's container, trusting nothing the user could have changed.

    The container is the user's: its programs and files may be booby-trapped. So the
    command is started from ``/``, under a ``timeout`` that kills it, in the caller's thread
    (never DockerSpawner's single worker thread, which every spawn and stop of every user
    waits for), and at most :data:`EXEC_OUTPUT_LIMIT` bytes of its output are kept. A
    command that ran out of time or printed too much is a failure.
    """
    deadline = time.monotonic() + seconds
    out, err, problem = bytearray(), bytearray(), ""
    try:
        killer = ["/usr/bin/timeout", "-s", "KILL", str(int(seconds)), *command]
        run = api.exec_create(container, killer, user=user, workdir="/")
        for chunk_out, chunk_err in api.exec_start(run["Id"], stream=True, demux=True):
            out += (chunk_out or b"")[: EXEC_OUTPUT_LIMIT - len(out)]
            err += (chunk_err or b"")[: EXEC_OUTPUT_LIMIT - len(err)]
            if len(out) >= EXEC_OUTPUT_LIMIT or len(err) >= EXEC_OUTPUT_LIMIT:
                problem = f"it printed more than {EXEC_OUTPUT_LIMIT} bytes"
                break
            if time.monotonic() > deadline:
                break
        code = api.exec_inspect(run["Id"])["ExitCode"]
    except (DockerException, OSError) as e:  # the gate given up, a read timed out...
        return 1, bytes(out), str(getattr(e, "explanation", None) or e).encode()
    if code is None or code == 137 or time.monotonic() > deadline:
        problem = problem or f"it did not finish within {seconds:g} s"
    return (code or 1, bytes(out), problem.encode()) if problem else (code, bytes(out), bytes(err))


def bridge_gateway(client: docker.DockerClient | None = None) -> str:
    """This host's address on Docker's default bridge: where containers reach the hub.

    Docker's network inspect names the gateway on most engines; some leave it empty, and
    then the ``docker0`` interface's own address is the answer.
    """
    client = client or docker.from_env()
    for config in client.networks.get("bridge").attrs.get("IPAM", {}).get("Config") or []:
        if config.get("Gateway"):
            return config["Gateway"].split("/")[0]
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    if not found:
        raise RuntimeError("cannot tell this host's address on the docker0 bridge")
    return found.group(1)


def _braces(text: str) -> str:
    """Escape ``{}`` for DockerSpawner, which formats label values as templates."""
    return text.replace("{", "{{").replace("}", "}}")


class PortalDockerSpawner(ProvenanceRecorder, PortalSpawner, DockerSpawner):
    """Single-user containers in the environment's image, with exactly the approved datasets."""

    home_volume = Unicode(
        "panosc-home-{username}",
        config=True,
        help="Named Docker volume holding a user's home; {username} is the user's name.",
    )
    manifest_dir = Unicode(
        config=True,
        help="Host folder where each server's datasets.json is written before it starts.",
    )

    @default("manifest_dir")
    def _default_manifest_dir(self) -> str:
        return os.path.abspath("manifests")

    @default("volumes")
    def _default_volumes(self) -> dict[str, str]:
        return {self.home_volume: str(HOME)}

    @default("notebook_dir")
    def _default_notebook_dir(self) -> str:
        return str(HOME)

    @default("remove")
    def _default_remove(self) -> bool:
        return True  # a stopped server leaves nothing behind but its home volume

    @default("prefix")
    def _default_prefix(self) -> str:
        return "panosc"

    @default("pull_policy")
    def _default_pull_policy(self) -> str:
        return "never"  # images come from `panosc-portal images build` or the pre-puller

    @default("use_internal_ip")
    def _default_use_internal_ip(self) -> bool:
        return True  # the proxy reaches the container on the Docker network; no host port

    pids_limit = Integer(
        1024, config=True, help="Processes (and threads) a user's container may run at once."
    )
    exec_timeout = Integer(
        120,
        config=True,
        help="Seconds a command the hub runs in a user's container (the mount check, a course"
        " delivery) may take.",
    )

    @default("network_name")
    def _default_network_name(self) -> str:
        return "panosc-users"  # spawner.docker_network: no traffic between users' servers

    async def secure_network(self) -> None:
        """Make sure the server joins a network where it reaches no other server and, of
        the host, only the hub's API (:mod:`spawner.docker_network`). Checked at every
        spawn: a firewall reload on the host may have removed the rules since."""
        port = urlsplit(self.hub.api_url).port or 80
        try:
            interface = await asyncio.to_thread(ensure_user_network, self.client, self.network_name)
            await asyncio.to_thread(guard_host, interface, port)
        except NetworkError as e:
            raise SpawnRefused(f"cannot start servers safely on this Docker host: {e}", 500) from e

    @default("extra_host_config")
    def _default_extra_host_config(self) -> dict:
        return {
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
        }

    _plan_mounts: tuple[Mount, ...] = ()

    @property
    def manifest_path(self) -> Path:
        return Path(self.manifest_dir) / f"{self.container_name}.json"

    @property
    def mount_binds(self) -> list[Mount]:
        return [*super().mount_binds, *self._plan_mounts]

    async def ensure_image(self, spawn: SpawnPlan) -> None:
        """A clear refusal when the environment's image is not on this Docker host."""
        image = spawn.environment.image
        try:
            await self.docker("inspect_image", image)
        except ImageNotFound:
            if self.pull_policy in ("never", "skip"):
                raise SpawnRefused(
                    f"environment {spawn.environment.name!r} needs the image {image}, which is"
                    f" not on this Docker host; build it with:"
                    f" panosc-portal images build {spawn.environment.name}",
                    503,
                ) from None

    def write_manifest(self, plan: MountPlan) -> None:
        folder = Path(self.manifest_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.manifest_path.write_text(plan.manifest_json(), encoding="utf-8")
        self.manifest_path.chmod(0o644)
        for m in plan.mounts:
            if not m.read_only and not m.source.exists():
                m.source.mkdir(parents=True)
                if os.geteuid() == 0:
                    os.chown(m.source, JOVYAN_UID, JOVYAN_GID)

    async def start(self) -> tuple[str, int]:
        started = time.time()
        spawn = await self.prepare_spawn()
        await self.ensure_image(spawn)
        self.image = spawn.environment.image
        await asyncio.to_thread(self.write_manifest, spawn.mounts)  # storage may be slow
        self._plan_mounts = tuple(docker_mounts(spawn.mounts, self.manifest_path))
        self.cpu_limit = spawn.resources.cpu
        self.mem_limit = spawn.resources.memory
        self.default_url = spawn.default_url
        pids = ",".join(d.pid for d in spawn.datasets)
        self.extra_create_kwargs = {
            "labels": {
                f"{LABEL_PREFIX}.datasets": _braces(json.dumps([d.pid for d in spawn.datasets])),
                f"{LABEL_PREFIX}.user": _braces(self.user.name),
                f"{LABEL_PREFIX}.server": _braces(self.name),
                f"{LABEL_PREFIX}.environment": spawn.environment.name,
                f"{LABEL_PREFIX}.server-type": spawn.options.server_type,
            }
        }
        self.log.info("%s: datasets %s", log_name(self), pids or "none")
        self.progress_event(f"Starting environment {spawn.environment.name} ({self.image})", 50)
        try:
            for mount in spawn.mounts.dataset_mounts:
                await asyncio.to_thread(verify_mount, mount)
        except MountError as e:
            raise SpawnRefused(str(e)) from e
        await self.secure_network()
        address = await super().start()  # the container waits at the gate (get_command)
        await self.verify_mounted(spawn.mounts)
        try:
            await self.sync_course()
        except CourseUnavailable as e:
            raise SpawnRefused(str(e), 503) from e
        await self.exec_checked(["/usr/bin/touch", GATE], "open the gate")
        ip, port = address
        await until_answering(f"http://{ip}:{port}{self.server.base_url}api", self.http_timeout)
        await self.record_start(spawn, started)
        return address

    async def environment_identity(self) -> tuple[str, str, str]:
        """The image and its digest as Docker reports them for this very container: its
        ``RepoDigests`` when the image came from a registry, else its Id (a local build)."""
        container = await asyncio.to_thread(self.client.inspect_container, self.container_id)
        image = await asyncio.to_thread(self.client.inspect_image, container["Image"])
        digest = (image.get("RepoDigests") or [image["Id"]])[0]
        return self.image, digest, f"Docker image {self.image}"

    def record_home(self) -> str:
        return str(HOME)

    async def run_record(self, arguments: list[str], home: str) -> tuple[int, bytes, bytes]:
        """:mod:`spawner.provenance_record` as jovyan in the container, with the image's
        system Python in isolated mode (:func:`exec_bounded`)."""
        command = [SYSTEM_PYTHON, "-I", "-S", "-c", program(), *arguments]
        user = f"{JOVYAN_UID}:{JOVYAN_GID}"
        return await asyncio.to_thread(
            exec_bounded, self.client, self.container_id, command, user, self.provenance_timeout
        )

    async def get_command(self) -> list[str]:
        return gated(await super().get_command(), self.start_timeout)

    async def run_in_container(self, command: list[str]) -> tuple[int, bytes, bytes]:
        """Exit code, output and errors of ``command`` run in the container as jovyan
        (:func:`exec_bounded`, in a thread of its own)."""
        return await asyncio.to_thread(
            exec_bounded,
            self.client,
            self.container_id,
            command,
            f"{JOVYAN_UID}:{JOVYAN_GID}",
            self.exec_timeout,
        )

    async def exec_checked(self, command: list[str], what: str) -> bytes:
        """Run ``command`` in the container; a failure stops it and refuses the spawn."""
        code, out, err = await self.run_in_container(command)
        if code:
            problem = (err or out).decode(errors="replace").strip()[-300:]
            await self.stop(now=True)
            raise SpawnRefused(f"cannot {what} in the new server: {problem}", 500)
        return out

    async def verify_mounted(self, plan: MountPlan) -> None:
        """Check, inside the new container, that each dataset mount is the folder checked.

        Docker binds by path, so a folder renamed or swapped between the catalogue check and
        the bind would be mounted in its place; :func:`check_mounted` compares what the
        container sees with what was planned, and on a mismatch the server is stopped before
        anyone can reach it.
        """
        if not plan.dataset_mounts:
            return
        code, out, err = await self.run_in_container(identity_command(plan))
        try:
            check_mounted(plan, code, out, err)
        except MountError as e:
            self.log.warning("%s: %s; stopping it", log_name(self), e)
            await self.stop(now=True)
            raise SpawnRefused(str(e)) from e

    async def sync_course(self) -> None:
        """Deliver the course of its server into ``~/courses/<name>/``, merged.

        The course's files go into the container as a tar (so the Docker engine need not see
        the hub's course folder), unpacked, root-owned, into a fresh folder under root's
        ``/run`` where the user cannot plant or swap anything; then
        :mod:`spawner.course_delivery` runs there as jovyan with the image's system Python in
        isolated mode (:func:`exec_bounded`), and the hub removes the copy. All of it off
        DockerSpawner's single worker thread. Other servers, and courses no longer listed, are
        left alone.
        """
        course = course_of_server(self.name)
        library = CourseLibrary.instance(config=self.config, log=self.log)
        if course not in library.courses:
            return
        staging = f"{course}-{secrets.token_hex(6)}"
        folder = await asyncio.to_thread(library.folder, course)
        archive = await asyncio.to_thread(course_archive, folder, staging, 0, 0)
        try:
            await asyncio.to_thread(self.client.put_archive, self.container_id, "/", archive)
            command = delivery_command(course, staging=staging)
            code, out, err = await self.run_in_container(command)
        finally:
            remove = ["/bin/rm", "-rf", "--", str(STAGING / staging)]
            await asyncio.to_thread(
                exec_bounded, self.client, self.container_id, remove, "0:0", self.exec_timeout
            )
        if code:
            problem = (err or out).decode(errors="replace").strip()[-800:]
            raise CourseUnavailable(f"course {course}: delivery into the server failed: {problem}")
        self.progress_event(f"Course {course}: {read_sync_report(out.decode()).summary()}", 90)

    async def stop(self, now: bool = False) -> None:
        await self.record_stop()  # while the container runs; a failure is only logged
        await super().stop(now=now)
        self.manifest_path.unlink(missing_ok=True)
