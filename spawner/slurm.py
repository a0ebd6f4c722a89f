"""The Slurm backend: each server is a batch job on the facility's cluster, in a sandbox.

Built on batchspawner's ``SlurmSpawner`` (its job state machine: submit, wait while
pending, poll, cancel, the job id kept in the hub's state), rather than on jupyterhub-moss,
which adds ESRF's own spawn form on top of it: the portal has a form of its own. Three
parts of batchspawner are replaced, each because it would open the data boundary:

- the job script is made here (:func:`job_script`), never from a template filled with
  ``user_options`` (batchspawner substitutes them into the script, so a forged option
  ``cmd`` or ``prologue`` would run anything outside the sandbox);
- Slurm's commands run without a shell, with a timeout, ``sbatch`` as the user's account;
- the hub takes only a port from the job (:mod:`portal.slurm_port`; batchspawner's handler
  sets any attribute of the spawner the request names).

The job runs :mod:`spawner.slurm_job` on the compute node as the user's own account: it
opens every planned folder again there and starts the server in bubblewrap, with the
environment (an image unpacked by ``panosc-portal images export``) as its root.

The session's provenance record (:mod:`spawner.provenance`) is written where the files are
and as the user, as on the other backends: a job step in the running job (``srun
--overlap`` as the user's account) runs the same node program, which builds a sandbox the
same way with only the home and the processed areas, and the record program in it.
"""

from __future__ import annotations

import asyncio
import base64
import grp
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchspawner import JobStatus, SlurmSpawner
from traitlets import Dict, Float, Integer, List, Unicode, default

from portal.upstream import drop_batchspawner_api, log_name, stopping
from spawner import nofollow, sandbox_init, slurm_job
from spawner.common import PortalSpawner, SpawnPlan, until_answering
from spawner.course_library import SYSTEM_PYTHON
from spawner.environments import UNPACKED_FILE
from spawner.mounts import MountError, MountPlan
from spawner.options import SpawnRefused, single_option
from spawner.provenance import ProvenanceRecorder, processed_mounts, program
from spawner.sandbox import (
    Account,
    SandboxError,
    account_comment,
    ensure_account,
    ensure_processed,
    take_home,
)
from spawner.seccomp import sandbox_filter

drop_batchspawner_api()  # importing batchspawner added it to the hub's API

#: The user options this backend adds to the portal's own.
SLURM_OPTIONS = ("partition", "walltime")
_MEMORY = re.compile(r"^([0-9]+)([KMGT]?)$")
#: Slurm's states of a job that has ended, and what the user is told.
ENDED = {
    "CANCELLED": "the job was cancelled on the cluster",
    "TIMEOUT": "the job reached its time limit",
    "NODE_FAIL": "the compute node running it failed",
    "FAILED": "the job failed",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "PREEMPTED": "the job was preempted by the cluster",
    "BOOT_FAIL": "the compute node could not be started",
    "DEADLINE": "the job reached its deadline",
    "COMPLETED": "the server exited",
}


@dataclass(frozen=True)
class JobOptions:
    """What the user chose for the job, checked against the site's partitions."""

    partition: str
    minutes: int


@dataclass(frozen=True)
class JobState:
    """One line of ``squeue``: state, reason, node and time left."""

    state: str
    reason: str
    node: str
    time_left: str

    @classmethod
    def parse(cls, line: str) -> JobState | None:
        parts = line.strip().split("|")
        return cls(*parts) if len(parts) == 4 else None


def parse_job_options(
    raw: Mapping[str, Any], partitions: Mapping[str, Mapping[str, Any]], default: str, minutes: int
) -> JobOptions:
    """Check the partition and time limit a user asked for; refuse naming what is allowed."""

    partition = single_option(raw, "partition") or default
    if partition not in partitions:
        raise SpawnRefused(
            f"unknown partition {partition!r}; choose one of {', '.join(partitions)}", 400
        )
    limit = int(partitions[partition].get("max_minutes", minutes))
    walltime = single_option(raw, "walltime")
    if walltime is None:
        return JobOptions(partition, min(minutes, limit))
    if not re.fullmatch(r"[0-9]{1,6}", walltime) or not 1 <= int(walltime) <= limit:
        raise SpawnRefused(
            f"time limit {walltime!r} is not allowed on partition {partition}: give a whole"
            f" number of minutes from 1 to {limit}",
            400,
        )
    return JobOptions(partition, int(walltime))


def memory_mb(memory: str) -> int:
    """``4G`` -> 4096: Slurm's ``--mem`` in megabytes."""
    match = _MEMORY.match(memory.strip().upper().removesuffix("I").removesuffix("B"))
    if not match:
        raise SpawnRefused(f"memory {memory!r} is not a size like 4G", 500)
    number, unit = int(match[1]), match[2]
    return max(1, number * {"": 1, "K": 1, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit] >> 20)


def node_modules() -> str:
    """Python that makes :mod:`spawner.nofollow`, :mod:`spawner.sandbox_init` and
    :mod:`spawner.slurm_job` importable from their sources, for the node's own
    ``python3 -I -S`` (which reads it on its standard input: nothing of the plan is on a
    command line, where anyone on the node could read it)."""
    modules = {
        "spawner.nofollow": Path(nofollow.__file__).read_bytes(),
        "spawner.sandbox_init": Path(sandbox_init.__file__).read_bytes(),
        "spawner.slurm_job": Path(slurm_job.__file__).read_bytes(),
    }
    encoded = {name: base64.b64encode(source).decode() for name, source in modules.items()}
    return "\n".join(
        [
            "import base64, sys, types",
            'sys.modules["spawner"] = types.ModuleType("spawner")',
            f"modules = {json.dumps(encoded)}",
            "for name, source in modules.items():",
            "    module = sys.modules[name] = types.ModuleType(name)",
            '    exec(compile(base64.b64decode(source), name, "exec"), module.__dict__)',
        ]
    )


def node_program(plan: dict[str, Any]) -> str:
    """The Python the job (or a step of it) runs on the node: the modules, then
    ``slurm_job.main(plan, arguments)`` with the program's own command-line arguments."""
    run = f'sys.modules["spawner.slurm_job"].main("{_b64(plan)}", sys.argv[1:])'
    return node_modules() + "\n" + run


def _b64(data: Any) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


#: The group of every portal account (an account name never has this shape: accounts are
#: ``panosc-<name>``): on a cluster, the processed root is open to it and to nobody else.
PORTAL_GROUP = "panosc_users"


def guard_processed_root(root: Path, account: Account) -> None:
    """Close the processed root to every cluster account but the portal's, and put
    ``account`` in their group.

    A job opens its processed areas on the node as the user, so the root cannot be root's
    alone as on the local backend; the areas in it are open to every member's account, so
    the root must keep everyone else out: other users of the cluster can log in to the nodes.
    Portal accounts run nothing of their own outside a sandbox, which holds only the areas
    of the user's proposals.
    """
    for command in (
        ["groupadd", "-f", PORTAL_GROUP],
        ["usermod", "-aG", PORTAL_GROUP, account.name],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise SandboxError(f"{' '.join(command)}: {done.stderr.strip()}")
    root.mkdir(parents=True, exist_ok=True)
    os.chown(root, 0, grp.getgrnam(PORTAL_GROUP).gr_gid)
    root.chmod(0o750)


#: The here-document's end: a line neither Python nor base64 can make.
END_OF_PROGRAM = "PANOSC-PORTAL-END-OF-PROGRAM"


def job_script(
    *,
    name: str,
    job: JobOptions,
    cpus: int,
    memory: int,
    account: str,
    output: str,
    extra: list[str],
    python: str,
    plan: dict[str, Any],
) -> str:
    """The batch script: ``#SBATCH`` lines from checked values only, then the node program
    (in a quoted here-document: the shell expands nothing in it)."""
    values = [name, job.partition, account, output, python, *extra]
    if any(ch in value for value in values for ch in "\n\r\0"):
        raise SpawnRefused("a value of the job script holds a line break; refusing it", 400)
    lines = [
        "#!/bin/sh",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --partition={job.partition}",
        f"#SBATCH --time={job.minutes}",
        f"#SBATCH --cpus-per-task={cpus}",
        f"#SBATCH --mem={memory}M",
        f"#SBATCH --output={output}",
        "#SBATCH --chdir=/",
        "#SBATCH --export=ALL",
        "#SBATCH --no-requeue",
    ]
    if account:
        lines.append(f"#SBATCH --account={account}")
    lines += extra
    lines.append(f"exec {python} -I -S - <<'{END_OF_PROGRAM}'")
    lines += [node_program(plan), END_OF_PROGRAM]
    return "\n".join(lines) + "\n"


class PortalSlurmSpawner(ProvenanceRecorder, PortalSpawner, SlurmSpawner):
    """A server per Slurm job, as the user's own account, in a bubblewrap sandbox."""

    supported_server_types = ("lab", "desktop")
    backend_options = SLURM_OPTIONS

    partitions = Dict(
        default_value={"short": {"max_minutes": 480}},
        config=True,
        help="""Partitions users may pick -> {"max_minutes": .., "max_cpus": ..,
        "max_memory": "8G", "label": ".."}; the first is the default.""",
    )
    default_partition = Unicode(
        "", config=True, help="The partition the form offers first; empty: the first one."
    )
    default_walltime = Integer(120, min=1, config=True, help="Minutes a job asks by default.")
    slurm_account = Unicode("", config=True, help="Slurm account jobs are charged to.")
    extra_sbatch = List(
        Unicode(), config=True, help="Extra '#SBATCH ...' lines of the site, one per entry."
    )
    slurm_conf = Unicode("", config=True, help="slurm.conf for the hub's Slurm commands.")
    environments_dir = Unicode(
        "/srv/panosc/environments",
        config=True,
        help="Shared folder of the unpacked environments (panosc-portal images export).",
    )
    node_python = Unicode("/usr/bin/python3", config=True, help="Python on the compute nodes.")
    bwrap = Unicode("/usr/bin/bwrap", config=True, help="bubblewrap on the compute nodes.")
    home_dir_template = Unicode(
        "/home/panosc/{username}",
        config=True,
        help="Each user's home on the shared filesystem the compute nodes mount.",
    )
    account_prefix = Unicode("panosc-", config=True, help="Prefix of the users' accounts.")
    command_timeout = Float(30.0, config=True, help="Seconds a Slurm command may take.")
    startup_poll_interval = Float(1.0, config=True, help="Seconds between two squeue calls.")
    port_timeout = Float(
        60.0, config=True, help="Seconds a running job may take to report its server's port."
    )

    @default("start_timeout")
    def _start_timeout_default(self) -> int:
        return 3600  # a job may wait in the queue: the user watches its progress

    job_end = 0.0  # when Slurm will end the running job (epoch), for the home page
    ended = ""  # why the job ended by itself, as the last query found it

    def get_state(self) -> dict:
        state = super().get_state()
        if self.job_end:
            state["walltime_end"] = self.job_end
        if self.ip:
            state["node_ip"] = self.ip
        return state

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.job_end = float(state.get("walltime_end") or 0)
        self.ip = state.get("node_ip", "")  # none yet: a start that was still waiting

    def clear_state(self) -> None:
        super().clear_state()
        self.job_end = 0.0

    # -- running Slurm's commands -------------------------------------------------------

    def slurm_env(self) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        return env

    async def run_slurm(
        self, *argv: str, stdin: str = "", env: dict | None = None, timeout: float = 0
    ) -> tuple[int, bytes, bytes]:
        """Run a Slurm command (no shell): exit code, output, errors. A command that hangs
        (controller down) ends at ``timeout`` (``command_timeout`` if 0), with
        :class:`RuntimeError`; it is asked to end first, so that ``srun`` can end its step."""
        seconds = timeout or self.command_timeout
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**self.slurm_env(), **(env or {})},
            )
        except OSError as e:
            raise RuntimeError(
                f"{argv[0]} cannot run on the hub ({e.strerror}): install slurm-client there"
            ) from None
        try:
            out, err = await asyncio.wait_for(process.communicate(stdin.encode()), seconds)
        except TimeoutError:
            raise RuntimeError(f"{argv[0]} did not answer in {seconds:g} s") from None
        finally:  # timed out, or its caller stopped waiting (a record's start)
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        return process.returncode or 0, out, err

    async def slurm(self, *argv: str, stdin: str = "", env: dict | None = None) -> str:
        """Run a Slurm command (no shell); its output, or :class:`RuntimeError` with its
        error (:meth:`run_slurm`)."""
        code, out, err = await self.run_slurm(*argv, stdin=stdin, env=env)
        if code:
            raise RuntimeError(err.decode(errors="replace").strip()[-500:] or f"{argv[0]} failed")
        return out.decode(errors="replace").strip()

    async def query_job_status(self) -> JobStatus:
        """The job's state as ``squeue`` reports it, ended jobs included (``--states=all``)."""
        if not self.job_id:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            self.job_status = await self.slurm(
                "squeue", "-h", "-j", self.job_id, "--states=all", "-o", "%T|%r|%N|%L"
            )
        except RuntimeError as e:
            self.job_status = str(e)
            if "Invalid job id" in self.job_status:
                self.ended = "the job is no longer known to the cluster"
                return JobStatus.NOTFOUND
            return JobStatus.UNKNOWN  # the controller did not answer: nothing is known
        state = JobState.parse(self.job_status)
        if state is None:
            return JobStatus.NOTFOUND
        if state.state == "RUNNING":
            return JobStatus.RUNNING
        if state.state in (
            "PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED", "STOPPED"
        ):  # fmt: skip
            return JobStatus.PENDING
        self.ended = self.ended_because()
        return JobStatus.NOTFOUND

    def ended_because(self) -> str:
        state = JobState.parse(self.job_status)
        if state is None:
            return "the job is no longer known to the cluster"
        reason = ENDED.get(state.state, f"the job ended ({state.state.lower()})")
        detail = f" ({state.reason})" if state.reason not in ("", "None") else ""
        return reason + detail

    async def cancel_batch_job(self) -> None:
        self.log.info("%s: cancelling job %s", log_name(self), self.job_id)
        await self.slurm("scancel", self.job_id)

    async def node_address(self, node: str) -> str:
        """The address the hub reaches ``node`` at, as slurm.conf gives it (``NodeAddr``)."""
        address = await self.slurm("sinfo", "-h", "-N", "-n", node, "-o", "%o")
        return address.splitlines()[0].strip() if address else node

    async def queue_position(self, partition: str) -> int:
        """Where the job stands among the partition's pending jobs, by Slurm's priority."""
        out = await self.slurm(
            "squeue", "-h", "-t", "PENDING", "-p", partition, "--sort=-p,i", "-o", "%i"
        )
        jobs = out.split()
        return jobs.index(self.job_id) + 1 if self.job_id in jobs else 0

    # -- the spawn ----------------------------------------------------------------------

    @property
    def first_partition(self) -> str:
        return self.default_partition or next(iter(self.partitions))

    def backend_form_context(self) -> dict[str, Any]:
        names = [self.first_partition, *(n for n in self.partitions if n != self.first_partition)]
        partitions = [
            {
                "name": n,
                "label": self.partitions[n].get("label")
                or f"{n} (up to {self.partitions[n]['max_minutes']} min)",
            }
            for n in names
        ]
        first = self.partitions[self.first_partition]
        return {
            "batch": {
                "partitions": partitions,
                "walltime": min(self.default_walltime, int(first["max_minutes"])),
                "max": max(int(p["max_minutes"]) for p in self.partitions.values()),
            }
        }

    _account: Account | None = None

    async def account(self) -> Account:
        if self._account is None:
            try:
                self._account = await asyncio.to_thread(
                    ensure_account, self.user.name, self.account_prefix
                )
            except SandboxError as e:
                raise SpawnRefused(str(e), 500) from e
        return self._account

    @property
    def home_folder(self) -> Path:
        """The user's home on the shared filesystem, as the hub and the nodes reach it."""
        return Path(self.home_dir_template.format(username=self.user.name))

    def environment_root(self, name: str) -> tuple[Path, dict[str, Any]]:
        """The unpacked environment ``name`` and what ``images export`` wrote about it."""
        root = Path(self.environments_dir) / name
        try:
            info = json.loads((root / UNPACKED_FILE).read_text())
        except (OSError, ValueError):
            raise SpawnRefused(
                f"the environment {name} is not unpacked on the cluster's shared storage"
                f" ({root}): run `panosc-portal images export --to {self.environments_dir}"
                f" {name}` on the hub",
                503,
            ) from None
        return root, info

    def sandbox_plan(
        self,
        mounts: MountPlan,
        account: Account,
        root: Path,
        info: dict,
        command: list[str],
        *,
        report_port: bool,
    ) -> dict[str, Any]:
        """What the node program needs to build a sandbox and run ``command`` in it: every
        path with the inode the hub checked. The server's and the record's sandboxes are
        both made from this, so they differ only in their mounts and command."""
        home = self.home_folder
        planned = [
            {
                "source": str(m.source),
                "target": str(m.target),
                "read_only": m.read_only,
                "pid": m.pid,
                "inode": m.identity[1] if m.identity else None,
            }
            for m in mounts.mounts
        ]
        return {
            "rootfs": str(root),
            "path": info.get("path") or "/usr/local/bin:/usr/bin:/bin",
            "home": str(home),
            "home_inode": home.lstat().st_ino,
            "home_target": str(account.home),
            "mounts": planned,
            "manifest": mounts.manifest_json(),
            "seccomp": base64.b64encode(sandbox_filter()).decode(),
            "command": command,
            "env": {"USER": account.name, "LANG": "C.UTF-8"},
            "report_port": report_port,
            "uid": account.uid,
            "comment": account_comment(self.user.name),
            "bwrap": self.bwrap,
            "sandbox_init": base64.b64encode(Path(sandbox_init.__file__).read_bytes()).decode(),
        }

    def job_plan(self, spawn: SpawnPlan, account: Account, root: Path, info: dict) -> dict:
        """The server's sandbox: the spawn's datasets and processed areas, JupyterLab."""
        server = [*self.cmd, *self.get_args()]
        return self.sandbox_plan(spawn.mounts, account, root, info, server, report_port=True)

    async def start(self) -> tuple[str, int]:
        """Check everything, submit, then report the queue until the job runs and its
        server has told the hub its port."""
        job = parse_job_options(
            self.user_options or {}, self.partitions, self.first_partition, self.default_walltime
        )
        spawn = await self.prepare_spawn()
        limits = self.partitions[job.partition]
        cpus, memory = math.ceil(spawn.resources.cpu), memory_mb(spawn.resources.memory)
        if cpus > int(limits.get("max_cpus", cpus)) or memory > memory_mb(
            str(limits.get("max_memory", f"{memory}M"))
        ):
            raise SpawnRefused(
                f"{spawn.resources.cpu:g} CPU and {spawn.resources.memory} memory do not fit"
                f" partition {job.partition} (at most {limits.get('max_cpus', '?')} CPU,"
                f" {limits.get('max_memory', '?')}): choose smaller resources",
                400,
            )
        root, info = self.environment_root(spawn.environment.name)
        account = await self.account()
        home = self.home_folder
        try:
            await asyncio.to_thread(take_home, home, account)
            if self.processed_root:
                await asyncio.to_thread(guard_processed_root, Path(self.processed_root), account)
            for mount in spawn.mounts.mounts:
                if not mount.read_only:
                    await asyncio.to_thread(ensure_processed, mount.source)
        except (MountError, SandboxError, OSError) as e:
            raise SpawnRefused(str(e)) from e
        self.default_url = spawn.default_url
        self.ip, self.port, self.job_end = "", 0, 0.0
        script = job_script(
            name=f"portal-{account.name}-{self.name or 'default'}"[:60],
            job=job,
            cpus=cpus,
            memory=memory,
            account=self.slurm_account,
            output=str(home / ".panosc-portal-job.log"),
            extra=list(self.extra_sbatch),
            python=self.node_python,
            plan=self.job_plan(spawn, account, root, info),
        )
        env = {k: v for k, v in self.get_env().items() if k.startswith("JUPYTERHUB_")}
        try:
            out = await self.slurm(
                "runuser", "-u", account.name, "--", "sbatch", "--parsable",
                stdin=script, env=env,
            )  # fmt: skip
            self.job_id = self.parse_job_id(out)
        except (RuntimeError, ValueError, IndexError) as e:
            raise SpawnRefused(f"the cluster refused the job: {e}", 503) from e
        # Kept at once, not only once the server is up: a hub restarted while the job waits
        # in the queue finds it (and cancels it, see poll) instead of leaving it to run.
        self.orm_spawner.state = self.get_state()
        self.db.commit()
        self.progress_event(f"Submitted job {self.job_id} to partition {job.partition}", 40)
        running = await self.until_running(job.partition)
        await self.record_start(spawn, running)
        return self.ip, self.port

    async def until_running(self, partition: str) -> float:
        """Follow the job: queued (with Slurm's reason and the position), starting on node
        N, then wait for the port the node program reports and for the server to answer;
        returns when the job began running (the session's start: the time it queued is not
        part of it). A job that ends first raises a message saying why; the hub then shows
        it and keeps nothing pending.

        ``squeue`` is asked 0.1 s after the submission, then at doubling intervals up to
        ``startup_poll_interval``: a free cluster starts a job within a second, a busy one
        must not be asked ten times a second by every waiting user. The port is looked for
        every 50 ms (the hub's own API sets it).
        """
        said, delay, due = "", 0.1, time.monotonic() + 0.1
        deadline = running = 0.0
        state: JobState | None = None
        while True:
            if time.monotonic() >= due:
                status = await self.query_job_status()
                state = JobState.parse(self.job_status)
                due, delay = time.monotonic() + delay, min(2 * delay, self.startup_poll_interval)
                if status == JobStatus.NOTFOUND:
                    why = self.ended
                    self.clear_state()
                    raise SpawnRefused(f"Your session did not start: {why}.", 503)
                if status == JobStatus.PENDING and state is not None:
                    position = await self.queue_position(partition)
                    where = f", position {position} in the queue" if position else ""
                    why = f": {state.reason}" if state.reason not in ("", "None") else ""
                    message = f"Queued on the cluster (job {self.job_id}{why}{where})"
                    if message != said:
                        self.progress_event(message, 50)
                        said = message
                if status == JobStatus.RUNNING and state is not None and not self.ip:
                    self.ip = await self.node_address(state.node)
                    running = time.time()
                    self.job_end = running + time_left(state.time_left)
                    self.progress_event(f"Starting on {state.node} ({self.ip})", 70)
                    deadline = time.monotonic() + self.port_timeout
            if self.ip and self.port and state is not None:
                self.progress_event(f"Server listening on {state.node}:{self.port}", 90)
                url = f"http://{self.ip}:{self.port}{self.server.base_url}api"
                await until_answering(url, self.http_timeout)
                return running
            if deadline and time.monotonic() > deadline:
                await self.cancel_batch_job()
                raise SpawnRefused(
                    f"Your session did not start: job {self.job_id} runs but its server did"
                    f" not report in {self.port_timeout:g} s; see ~/.panosc-portal-job.log",
                    503,
                )
            await asyncio.sleep(0.05)

    async def poll(self) -> int | None:
        """batchspawner's poll (and the portal's audit); a job that ended by itself leaves
        the home page a line saying why (kept in the state the audit's reasons use), and a
        job whose start an earlier hub process was following is cancelled."""
        self.ended = ""
        if self.job_id and not self.ip and self.pending != "spawn" and not stopping(self):
            # a start this hub process is not following: the hub restarted while the job
            # was queued or starting, and nobody waits for it any more
            await self.cancel_batch_job()
            self.access_revoked = (
                f"Your session {self.name or 'default'} did not start: the portal restarted"
                " while it was waiting on the cluster. Start it again."
            )
            self.clear_state()
            return 1
        status = await super().poll()
        if status is not None and self.ended and not stopping(self):
            self.access_revoked = f"Your session {self.name or 'default'} ended: {self.ended}."
        return status

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        """The job's environment is the node program's to set (batchspawner would look the
        portal's user name up as a system account)."""
        return env

    async def stop(self, now: bool = False) -> None:
        """Complete the provenance record while the job runs, then cancel the job (scancel)
        and wait for Slurm to end it. Stopped ``now`` (the access audit found a dataset the
        user lost), the job is cancelled first: the record is left unfinished rather than
        the data left mounted while it is written."""
        if self.job_id:
            if not now:
                await self.record_stop()  # a failure is only logged
            await super().stop(now=now)

    # -- provenance ---------------------------------------------------------------------

    async def environment_identity(self) -> tuple[str, str, str]:
        """The unpacked environment, as ``images export`` described it: the image it was
        unpacked from and that image's id. No registry digest exists on the cluster: the
        root the job mounts is a copy of exactly that image, whose id names its content."""
        root, info = self.environment_root(self.environment_name)
        image = str(info.get("image") or "")
        return (
            image,
            str(info.get("id") or ""),
            f"Docker image {image}, unpacked to {root} by panosc-portal images export",
        )

    def record_home(self) -> str:
        """The home where the sandbox shows it (``/home/<account>``)."""
        assert self._account is not None  # record_start runs after account()
        return str(self._account.home)

    async def run_record(self, arguments: list[str], home: str) -> tuple[int, bytes, bytes]:
        """:mod:`spawner.provenance_record` in the running job, as the user's account: a
        step (``srun --overlap``, sharing the server's CPUs and memory) running the node
        program with a plan of its own, the home and the processed areas and nothing else,
        the environment's Python and no port to report. The hub never writes into a home,
        and the step ends with the job's allocation whatever it does.

        The facts are the step's arguments, after the node program: at most 100 kB each
        (:func:`spawner.provenance.program_arguments`), as one argument must be.
        """
        if not self.job_id:
            raise RuntimeError("no job to run the record in")
        account = await self.account()
        root, info = self.environment_root(self.environment_name)
        plan = self.sandbox_plan(
            MountPlan(processed_mounts(self.processed_root, self.member_of), ()),
            account,
            root,
            info,
            [SYSTEM_PYTHON, "-I", "-S", "-c", program()],
            report_port=False,
        )
        step = ["srun", f"--jobid={self.job_id}", "--overlap", "-N1", "-n1", "--quiet"]
        step += ["--chdir=/", f"--time={math.ceil(self.provenance_timeout / 60)}"]
        return await self.run_slurm(
            "runuser", "-u", account.name, "--", *step,
            self.node_python, "-I", "-S", "-", *arguments,
            stdin=node_program(plan), timeout=self.provenance_timeout,
        )  # fmt: skip


def time_left(text: str) -> float:
    """Seconds in squeue's ``%L`` (``[days-]hours:minutes:seconds``, or ``UNLIMITED``)."""
    if not text or not text[0].isdigit():
        return 365 * 86400.0
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


__all__ = ["PortalSlurmSpawner", "job_script", "parse_job_options"]
