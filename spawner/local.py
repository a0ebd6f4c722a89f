"""The local backend: each user's servers on this host, under their own account, sandboxed.

For one Linux host without Docker (a beamline, a training room, a small lab, the embedded
demo). Each server runs in a bubblewrap sandbox (:mod:`spawner.sandbox`) as the user's own
system account, in the hub's Python environment (read-only): it sees its home, exactly the
approved datasets read-only under ``~/datasets``, a private ``/tmp``, and none of the host's
data tree, other homes or the hub's state; its network reaches the hub's API and nothing
else. The hub must run as root, to create the accounts and the sandboxes. A sandbox ends
with the hub that started it, as JupyterHub's ``cleanup_servers`` would stop it anyway;
what the user saved stays in their home.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path, PurePosixPath
from subprocess import Popen
from urllib.parse import urlsplit

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Integer, Unicode, default

from portal.upstream import log_name
from spawner import course_delivery, provenance_record, sandbox_init
from spawner.common import PortalSpawner
from spawner.course_delivery import STAGING
from spawner.course_library import (
    CourseLibrary,
    CourseUnavailable,
    course_of_server,
    read_sync_report,
)
from spawner.mounts import MountError, MountPlan
from spawner.options import SpawnRefused
from spawner.provenance import ProvenanceRecorder, local_environment, processed_mounts
from spawner.sandbox import (
    RUN,
    Account,
    Bridges,
    Limits,
    Sandbox,
    SandboxError,
    ensure_account,
    environment_paths,
    host_check,
    make_run_folder,
    run_bounded,
    server_socket,
    take_home,
)

#: Where the sandbox sees the two programs the hub runs in it.
PROGRAMS = PurePosixPath("/opt/panosc-portal")
INIT = PROGRAMS / "sandbox_init.py"
DELIVERY = PROGRAMS / "course_delivery.py"
RECORD = PROGRAMS / "provenance_record.py"
#: JupyterLab's settings overrides, as the images carry them: no news prompt, no update check.
#: The server runs in the hub's own environment, so it gets them as its app settings folder.
LAB_OVERRIDES = Path(__file__).with_name("lab_overrides.json").resolve()
LAB_SETTINGS = PROGRAMS / "lab-settings"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


class PortalLocalSpawner(ProvenanceRecorder, PortalSpawner, LocalProcessSpawner):
    """Sandboxed local servers, each user under an account of their own.

    Every server runs in the hub's own Python environment, so the environment option only
    picks the landing page; desktops need a container backend.
    """

    supported_server_types = ("lab",)

    account_prefix = Unicode(
        "panosc-",
        config=True,
        help="Prefix of the system accounts made for portal users (panosc-alice...).",
    )
    runtime_dir = Unicode(
        "/run",
        config=True,
        help="Where each running server gets a private folder for its sockets (keep it short:"
        " a Unix socket's path has at most 107 bytes).",
    )
    process_limit = Integer(
        512, config=True, help="Processes (and threads) a user's account may run at once."
    )
    delivery_timeout = Integer(120, config=True, help="Seconds a course delivery may take.")
    legacy_home_owner = Integer(
        -1,
        config=True,
        help="The uid that owns homes made by versions before the sandbox (the hub's own);"
        " such a home is handed over to its user's account. -1: none.",
    )
    home_dir_template = Unicode(
        config=True,
        help="Each user's home folder on this host; {username} is the portal user's name.",
    )

    @default("home_dir_template")
    def _default_home_dir_template(self) -> str:
        return str(Path.home() / ".local/share/panosc-portal/homes/{username}")

    @property
    def home_dir(self) -> str:
        return self.home_dir_template.format(username=self.user.name)

    _run: str = ""
    _account: Account | None = None

    @property
    def bridges(self) -> Bridges:
        if not hasattr(self, "_bridges"):
            self._bridges = Bridges()
        return self._bridges

    def get_state(self) -> dict:
        state = super().get_state()
        if self._run:
            state["run"] = self._run
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self._run = state.get("run", "")

    def clear_state(self) -> None:
        super().clear_state()
        self._run = ""

    async def account(self) -> Account:
        if self._account is None:
            problem = host_check()
            if problem:
                raise SpawnRefused(f"cannot start a local server: {problem}", 500)
            try:
                self._account = await asyncio.to_thread(
                    ensure_account, self.user.name, self.account_prefix
                )
            except SandboxError as e:
                raise SpawnRefused(str(e), 500) from e
        return self._account

    def hub_address(self) -> tuple[str, int]:
        """Where the hub's API listens, as the server is told to reach it."""
        url = urlsplit(self.hub.api_url)
        return url.hostname or "127.0.0.1", url.port or 80

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """The account's identity; the hub's API as the sandbox reaches it (its own loopback,
        bridged by :mod:`spawner.sandbox_init`)."""
        assert self._account is not None
        env.update(USER=self._account.name, HOME=str(self._account.home), SHELL="/bin/bash")
        env["PATH"] = f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin"
        inside = f"127.0.0.1:{self.hub_address()[1]}"
        for key in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
            if env.get(key):
                env[key] = urlsplit(env[key])._replace(netloc=inside).geturl()
        return env

    @property
    def legacy_owner(self) -> int | None:
        return self.legacy_home_owner if self.legacy_home_owner >= 0 else None

    def limits(self) -> Limits:
        """Memory (``mem_limit``, set from the environment's resources) and processes."""
        return Limits(memory=self.mem_limit or Limits.memory, processes=self.process_limit)

    async def sync_course(self) -> None:
        """Deliver the course of a ``course-<name>`` server into ``~/courses/<name>/``, merged.

        :mod:`spawner.course_delivery` runs in a sandbox of its own as the user, with the
        course bound read-only: the hub never writes into a home itself.
        """
        course = course_of_server(self.name)
        library = CourseLibrary.instance(config=self.config, log=self.log)
        if course not in library.courses:
            return
        account = await self.account()
        source = await asyncio.to_thread(library.folder, course)
        home = Path(self.home_dir)
        await asyncio.to_thread(take_home, home, account, self.legacy_owner)
        programs = [(Path(course_delivery.__file__), DELIVERY), (source, STAGING / course)]
        argv = [sys.executable, "-I", "-S", str(DELIVERY), "sync", str(STAGING / course)]
        argv.append(str(account.home / "courses" / course))
        env = {"HOME": str(account.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        box = await asyncio.to_thread(
            Sandbox,
            account=account,
            home=home,
            plan=MountPlan((), ()),
            environment=environment_paths(),
            binds=programs,
        )
        with box:
            code, out, err = await run_bounded(
                box.command(argv), box.fds, env, self.delivery_timeout, self.limits()
            )
        if code:
            problem = (err or out).decode(errors="replace").strip()[-800:]
            raise CourseUnavailable(f"course {course}: delivery into your home failed: {problem}")
        self.progress_event(f"Course {course}: {read_sync_report(out.decode()).summary()}", 50)

    async def start(self) -> tuple[str, int]:
        started = time.time()
        spawn = await self.prepare_spawn()
        account = await self.account()
        home = Path(self.home_dir)
        try:
            await asyncio.to_thread(take_home, home, account, self.legacy_owner)
            await self.sync_course()
        except (MountError, SandboxError) as e:
            raise SpawnRefused(str(e)) from e
        except CourseUnavailable as e:
            raise SpawnRefused(str(e), 503) from e
        self.default_url = spawn.default_url
        self.mem_limit = spawn.resources.memory
        if self.port == 0:
            self.port = random_port()
        run = make_run_folder(self.runtime_dir, account)
        self._run = str(run)
        await self.bridges.start(run, self.port, self.hub_address(), account)
        listener = server_socket(run)
        server = [*self.cmd, *self.get_args(), f"--LabApp.app_settings_dir={LAB_SETTINGS}"]
        init = [sys.executable, "-I", "-S", str(INIT), "--run", str(RUN)]
        init += ["--server-fd", str(listener.fileno())]
        init += ["--hub-port", str(self.hub_address()[1]), "--server-port", str(self.port)]
        self.progress_event("Starting JupyterLab in your sandbox", 60)
        try:
            with listener:
                # Opening and checking every mount touches the storage, which may be slow:
                # in a worker thread, so that the hub keeps serving everyone else.
                box = await asyncio.to_thread(
                    Sandbox,
                    account=account,
                    home=home,
                    plan=spawn.mounts,
                    environment=environment_paths(),
                    run=Path(self._run),
                    binds=[
                        (Path(sandbox_init.__file__), INIT),
                        (LAB_OVERRIDES, LAB_SETTINGS / "overrides.json"),
                    ],
                )
                with box:
                    self.proc = Popen(
                        box.command([*init, "--", *server]),
                        env=self.get_env(),
                        preexec_fn=self.limits().apply,
                        start_new_session=True,
                        pass_fds=(*box.fds, listener.fileno()),
                        cwd="/",
                    )
        except MountError as e:
            self.cleanup(self._run)
            raise SpawnRefused(str(e)) from e
        self.pid = self.proc.pid
        self.log.info("%s: sandbox %d as %s", log_name(self), self.pid, account.name)
        await self.until_answering(run)
        await self.record_start(spawn, started)
        return "127.0.0.1", self.port

    async def environment_identity(self) -> tuple[str, str, str]:
        """Local servers run in the hub's own Python: named by it (no image to name)."""
        return local_environment()

    def record_home(self) -> str:
        assert self._account is not None  # record_start runs after account()
        return str(self._account.home)

    async def run_record(self, arguments: list[str], home: str) -> tuple[int, bytes, bytes]:
        """:mod:`spawner.provenance_record` in a sandbox of its own as the user, with their
        home and processed areas and nothing else of theirs, as a course delivery runs: the
        hub never writes into a home itself."""
        account = await self.account()
        box = await asyncio.to_thread(
            Sandbox,
            account=account,
            home=Path(self.home_dir),
            plan=MountPlan(processed_mounts(self.processed_root, self.member_of), ()),
            environment=environment_paths(),
            binds=[(Path(provenance_record.__file__), RECORD)],
        )
        argv = [sys.executable, "-I", "-S", str(RECORD), *arguments]
        env = {"HOME": str(account.home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
        with box:
            return await run_bounded(
                box.command(argv), box.fds, env, self.provenance_timeout, self.limits()
            )

    async def until_answering(self, run: Path) -> None:
        """Return once the server answers HTTP on its socket, asked every 50 ms.

        JupyterHub's own readiness check backs off exponentially (0.2, 0.4, 0.8, 1.6 s...),
        so a server up after 1.5 s would be seen only at 3 s; here the hub's first check
        finds it up. A server that exits or stays silent is left to JupyterHub to report.
        """
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError, TimeoutError):
                reader, writer = await asyncio.open_unix_connection(str(run / "server.sock"))
                try:
                    writer.write(b"GET / HTTP/1.0\r\n\r\n")
                    if (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/"):
                        return
                finally:
                    writer.close()
            await asyncio.sleep(0.05)

    async def poll(self) -> int | None:
        """As JupyterHub's, except that a server this hub process did not start is gone: a
        sandbox ends with the hub that started it (``--die-with-parent``), and the pid it
        had may belong to another process by now."""
        run = self._run
        if self.proc is None and self.pid:
            self.clear_state()
            status: int | None = 0
        else:
            status = await super().poll()
        if status is not None:
            self.cleanup(run)
        return status

    async def _signal(self, sig: int) -> bool:
        """Ask the server to stop through the first process in its sandbox, which passes the
        signal on (bubblewrap itself would only die, killing everything at once).

        JupyterHub's private hook (see :mod:`portal.upstream`, whose test checks that
        ``poll`` and ``stop`` still go through it)."""
        if sig in (signal.SIGINT, signal.SIGTERM):
            for leader in _children(self.pid):
                for init in _children(leader):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(init, sig)
                        return True
        return await super()._signal(sig)

    def cleanup(self, run: str) -> None:
        """Close the server's bridges and remove its socket folder."""
        self.bridges.close()
        if run:
            shutil.rmtree(run, ignore_errors=True)

    async def stop(self, now: bool = False) -> None:
        run = self._run
        await self.record_stop()  # while the server runs; a failure is only logged
        await super().stop(now=now)
        self.cleanup(run)


__all__ = ["PortalLocalSpawner"]
