"""The local-process backend: for a laptop and the embedded demo. NOT an isolation boundary.

Single-user servers run as the hub's own OS user. Datasets appear under
``~/datasets/<proposal>/<dataset>`` as symlinks into the (read-only) data tree. When the hub
runs as root, each server is started with every Linux capability dropped and
``no_new_privs`` set, so file permissions bind it like any user and a read-only tree stays
read-only. A user can still read anything the hub's OS user can read: use the Docker or
Kubernetes backend wherever users must not trust each other.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Callable
from pathlib import Path

from jupyterhub.spawner import SimpleLocalProcessSpawner
from traitlets import default

from spawner.common import PortalSpawner
from spawner.courses import CourseLibrary, course_of_server, sync
from spawner.mounts import DATASETS_DIR, MANIFEST_NAME, MountError, MountPlan, verify_mount
from spawner.options import SpawnRefused

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


def drop_all_capabilities() -> None:
    """Empty the capability bounding set so that after exec even uid 0 holds no capability."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"cannot drop capability {cap}")
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs")


def expose_plan(home: Path, plan: MountPlan) -> None:
    """Make ``~/datasets`` show exactly the plan: symlinks, plus ``datasets.json``.

    What an earlier spawn left (symlinks, the manifest, then empty folders) is removed
    first; a file the user saved there is never touched.
    """
    top = home / DATASETS_DIR
    if top.is_symlink() or top.is_file():
        raise FileExistsError(f"{top} exists and is not a folder; move it away and start again")
    if top.exists():
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_symlink() or path == top / MANIFEST_NAME:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    top.mkdir(parents=True, exist_ok=True)
    for mount in plan.mounts:
        link = home / mount.target
        link.parent.mkdir(parents=True, exist_ok=True)
        if not mount.read_only:
            mount.source.mkdir(parents=True, exist_ok=True)
        verify_mount(mount)  # still the folder the catalogue check planned
        link.symlink_to(mount.source, target_is_directory=True)
    (top / MANIFEST_NAME).write_text(plan.manifest_json(), encoding="utf-8")


class PortalLocalSpawner(PortalSpawner, SimpleLocalProcessSpawner):
    """Local single-user servers with the user's datasets linked read-only into ~/datasets.

    Every server runs in the hub's own Python environment, so the environment option only
    picks the landing page; desktops need a container backend.
    """

    supported_server_types = ("lab",)

    @default("home_dir_template")
    def _default_home_dir_template(self) -> str:
        return str(Path.home() / ".local/share/panosc-portal/homes/{username}")

    def make_preexec_fn(self, name: str) -> Callable[[], None]:
        parent = super().make_preexec_fn(name)

        def preexec() -> None:
            parent()
            if os.geteuid() == 0:
                drop_all_capabilities()

        return preexec

    def get_args(self) -> list[str]:
        args = super().get_args()
        if os.geteuid() == 0:
            args.append("--allow-root")
        return args

    async def sync_course(self) -> None:
        """Deliver the course of a ``course-<name>`` server into ``~/courses/<name>/``, merged.

        The home is on this host, so the merge (:func:`spawner.courses.sync`) runs here.
        """
        course = course_of_server(self.name)
        library = CourseLibrary.instance(config=self.config, log=self.log)
        if course not in library.courses:
            return
        source = await asyncio.to_thread(library.folder, course)
        dest = Path(self.home_dir) / "courses" / course
        report = await asyncio.to_thread(sync, source, dest)
        self.progress_event(f"Course {course}: {report.summary()}", 50)

    async def start(self) -> tuple[str, int]:
        spawn = await self.prepare_spawn()
        home = Path(self.home_dir)
        home.mkdir(parents=True, exist_ok=True)
        try:
            expose_plan(home, spawn.mounts)
        except MountError as e:
            raise SpawnRefused(str(e)) from e
        await self.sync_course()
        self.default_url = spawn.default_url
        self.progress_event("Starting JupyterLab", 60)
        return await super().start()


__all__ = ["PortalLocalSpawner", "drop_all_capabilities", "expose_plan"]
