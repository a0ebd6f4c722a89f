"""The local backend's sandbox, as the hub builds it: an account per user, and bubblewrap.

Each portal user gets a system account of their own (``panosc-<name>``, created on the
first spawn with ``useradd``, as The Littlest JupyterHub does), and every process of theirs
runs in a bubblewrap sandbox (Debian's ``bubblewrap``) under that uid:

- its own mount, PID, IPC, UTS and network namespaces: it sees its own processes only, and
  its network is a private loopback (:mod:`spawner.sandbox_init` bridges the server's port
  and the hub's API, nothing else);
- a root of its own: the system (``/usr``, ``/etc``) and the Python environment read-only,
  the user's home read-write at ``/home/<account>``, exactly the planned datasets read-only
  under ``~/datasets`` with ``datasets.json``, the processed areas of the plan, and a
  private ``/tmp``. The host's data tree, other homes and the hub's state are not in it;
- no capability and ``no_new_privs`` (``setpriv``), with memory and process limits, and a
  seccomp filter (:mod:`spawner.seccomp`): no new namespaces, none of the riskiest kernel
  interfaces.

Every bind of a dataset or a home is made from a descriptor the hub opened without
following symlinks and checked against the plan (:func:`spawner.mounts.open_verified`), so
a folder renamed after the access check cannot be mounted in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import pwd
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from spawner.mounts import DATASETS_DIR, MANIFEST_NAME, MountError, MountPlan, open_verified
from spawner.sandbox_init import CHUNK, Streams, bridge
from spawner.seccomp import sandbox_filter

#: Where the sandbox finds its two sockets (:mod:`spawner.sandbox_init`).
RUN = PurePosixPath("/run/portal")
_ACCOUNT_NAME = re.compile(r"[a-z][a-z0-9-]*")
_useradd_lock = threading.Lock()
OUTPUT_LIMIT = 1 << 20
#: Connections a sandbox may hold open to the hub's API at once.
HUB_CONNECTIONS = 32
#: Connections through the proxy to one server at once (each holds hub descriptors).
SERVER_CONNECTIONS = 512
#: Open files a sandboxed process may raise its own limit to.
FILES_HARD = 65536
#: The size of a sandbox's private /tmp and /dev/shm (memory: each is a tmpfs).
TMP_SIZE = 1 << 30


class SandboxError(Exception):
    """The host cannot run sandboxes, or an account cannot be used; the message says why."""


@dataclass(frozen=True)
class Account:
    """The system account a portal user's processes run as."""

    name: str
    uid: int
    gid: int

    @property
    def home(self) -> PurePosixPath:
        """Where the user's home is, inside the sandbox."""
        return PurePosixPath("/home") / self.name


def account_name(username: str, prefix: str = "panosc-") -> str:
    """A valid system account name for ``username``: ``<prefix><name>`` when that is one
    (at most 32 lower-case letters, digits and '-'), else shortened with a digest after an
    '_', which no name of the first kind contains: two portal users never share an account."""
    name = prefix + username
    if _ACCOUNT_NAME.fullmatch(name) and len(name) <= 32:
        return name
    slug = re.sub(r"[^a-z0-9]+", "-", username.lower()).strip("-")
    digest = hashlib.sha256(username.encode()).hexdigest()[:10]
    return f"{prefix}{slug[: 31 - len(prefix) - len(digest)].rstrip('-')}_{digest}"


def account_comment(username: str) -> str:
    """The account's GECOS field, which marks it as this portal user's and nobody else's."""
    return "PaNOSC Portal user " + hashlib.sha256(username.encode()).hexdigest()[:16]


def ensure_account(username: str, prefix: str = "panosc-") -> Account:
    """The user's system account, created if missing: ``useradd`` with no home made, no login
    shell and no password, a uid from the ordinary range (the system range, under 1000, would
    run out after a few hundred users).

    An existing account is used only if it is marked as this portal user's, so the portal
    never runs a user's code as an account it did not make for them.
    """
    name, comment = account_name(username, prefix), account_comment(username)
    with _useradd_lock:
        try:
            entry: pwd.struct_passwd | None = pwd.getpwnam(name)
        except KeyError:
            entry = None
        if entry is None:
            done = subprocess.run(
                [
                    "useradd",
                    "-K",
                    "SUB_UID_COUNT=0",  # no subordinate ids: it never makes namespaces
                    "-K",
                    "SUB_GID_COUNT=0",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    f"/home/{name}",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    comment,
                    name,
                ],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise SandboxError(f"cannot create the account {name}: {done.stderr.strip()}")
        entry = pwd.getpwnam(name)
    if entry.pw_gecos != comment or entry.pw_uid == 0 or entry.pw_gid == 0:
        raise SandboxError(
            f"the system account {name} exists but was not made by the portal for {username};"
            " remove or rename it, or set PortalLocalSpawner.account_prefix"
        )
    return Account(name, entry.pw_uid, entry.pw_gid)


def take_home(home: Path, account: Account, legacy_owner: int | None = None) -> None:
    """Create the user's home folder on the host (mode 700) and give it to their account.

    A folder that already exists is used only if it is the account's, or if it belongs to
    ``legacy_owner``: homes made by earlier versions, which ran every server as the hub's
    user, are then handed over whole, without following any symlink in them. Any other
    folder (a real user's home, or an admin's, that the template happens to name) is refused.
    """
    home.parent.mkdir(parents=True, exist_ok=True)
    try:
        home.mkdir(mode=0o700)
        os.chown(home, account.uid, account.gid)
    except FileExistsError:
        pass
    info = home.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SandboxError(f"{home} is not a folder; move it away and start again")
    if info.st_uid != account.uid and info.st_uid != legacy_owner:
        raise SandboxError(
            f"{home} belongs to another account (uid {info.st_uid}); the portal hands over only"
            " homes it made itself: check PortalLocalSpawner.home_dir_template"
        )
    if info.st_uid != account.uid:
        for folder, dirs, files in os.walk(home):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(folder, name), account.uid, account.gid)
        os.lchown(home, account.uid, account.gid)
    home.chmod(0o700)
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:  # the mount point of ~/datasets, made without following what the user put there
        with contextlib.suppress(FileExistsError):
            os.mkdir(str(DATASETS_DIR), 0o755, dir_fd=fd)
        if not stat.S_ISDIR(os.stat(str(DATASETS_DIR), dir_fd=fd, follow_symlinks=False).st_mode):
            raise MountError(f"{home / DATASETS_DIR} is not a folder; move it away and start again")
        os.chown(str(DATASETS_DIR), account.uid, account.gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def environment_paths() -> list[Path]:
    """The hub's own Python environment (its virtualenv and the interpreter under it): what
    a local server runs in, bound read-only."""
    paths = [Path(sys.prefix), Path(sys.base_prefix).resolve()]
    return [p for p in dict.fromkeys(paths) if not p.is_relative_to("/usr")]


def system_binds() -> list[str]:
    """bubblewrap arguments showing the host's system read-only: ``/usr``, ``/etc`` and the
    top-level links or folders of the libraries and commands (merged-/usr or not)."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox: data segment per process (``RLIMIT_DATA``: shared
    mappings and tmpfs escape it, so it is a guard, not a memory quota), processes per
    account, and open files back at an ordinary 1024 (the hub raised its own)."""

    memory: int = 4 << 30
    processes: int = 512

    def apply(self) -> None:
        """Set these limits on the calling process (before it execs the sandbox)."""
        resource.setrlimit(resource.RLIMIT_DATA, (self.memory, self.memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (self.processes, self.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        hard = min(FILES_HARD, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


class Sandbox:
    """One bubblewrap sandbox: build with the mounts, then :meth:`command` and :meth:`fds`.

    The descriptors it opens stay open until :meth:`close` (or the end of a ``with`` block);
    pass them to the process (``pass_fds``) and close them once it has started.
    """

    def __init__(
        self,
        account: Account,
        home: Path,
        plan: MountPlan,
        environment: Sequence[Path] = (),
        run: Path | None = None,
        binds: Sequence[tuple[Path, PurePosixPath]] = (),
    ) -> None:
        self.account, self._fds = account, []
        self._made: set[PurePosixPath] = {PurePosixPath("/")}
        args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
        args += ["--unshare-uts", "--unshare-cgroup-try", "--unshare-net", "--hostname", "portal"]
        args += system_binds()
        args += ["--proc", "/proc", "--dev", "/dev"]
        for tmp in ("/tmp", "/dev/shm"):  # /dev/shm: POSIX semaphores, as multiprocessing uses
            args += ["--perms", "1777", "--size", str(TMP_SIZE), "--tmpfs", tmp]
            self._made.add(PurePosixPath(tmp))
        for path in environment:  # after /tmp: an environment may live under it
            args += [*self._parents(PurePosixPath(path)), "--ro-bind", str(path), str(path)]
        try:
            args += self._bind_fd(home_fd(home), account.home, writable=True)
            datasets = account.home / DATASETS_DIR
            args += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", str(datasets)]
            self._made.add(datasets)
            for mount in plan.mounts:
                if not mount.read_only:
                    ensure_processed(mount.source)
                fd = open_verified(mount)
                args += self._bind_fd(fd, account.home / mount.target, not mount.read_only)
            manifest = self._memfd("datasets.json", plan.manifest_json().encode())
            args += ["--perms", "0444", "--ro-bind-data", str(manifest)]
            args.append(str(account.home / DATASETS_DIR / MANIFEST_NAME))
            args += ["--seccomp", str(self._memfd("seccomp", sandbox_filter()))]
            for source, target in binds:
                args += [*self._parents(target), "--ro-bind", str(source), str(target)]
            if run is not None:
                args += [*self._parents(RUN), "--ro-bind", str(run), str(RUN)]
        except BaseException:
            self.close()
            raise
        args += ["--chdir", str(account.home)]
        self._args = args

    def _memfd(self, name: str, data: bytes) -> int:
        """A descriptor holding ``data``, for bubblewrap to read."""
        fd = os.memfd_create(name)
        self._fds.append(fd)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def _parents(self, path: PurePosixPath) -> list[str]:
        """``--dir`` for each missing ancestor of ``path``, readable by the user (bubblewrap
        would otherwise make them mode 700, owned by root)."""
        args = []
        for parent in reversed(path.parents):
            if parent not in self._made:
                args += ["--perms", "0755", "--dir", str(parent)]
                self._made.add(parent)
        return args

    def _bind_fd(self, fd: int, target: PurePosixPath, writable: bool) -> list[str]:
        self._fds.append(fd)
        self._made.add(target)
        option = "--bind-fd" if writable else "--ro-bind-fd"
        return [*self._parents(target), option, str(fd), str(target)]

    def command(self, argv: Sequence[str]) -> list[str]:
        """The command running ``argv`` in this sandbox as the account, without privileges."""
        uid, gid = str(self.account.uid), str(self.account.gid)
        drop = ["setpriv", "--reuid", uid, "--regid", gid, "--clear-groups"]
        drop += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        return [*self._args, "--", *drop, "--", *argv]

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(self._fds)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def home_fd(home: Path) -> int:
    """A descriptor of the user's home folder, opened without following a symlink."""
    return os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)


def ensure_processed(folder: Path) -> None:
    """A proposal's processed area, writable by each member's account.

    Members have accounts of their own, so the folder is open to all (1777 would stop them
    editing each other's results): only members' sandboxes are given it, and on the host
    it should sit under a processed root that only root can enter.
    """
    if not folder.exists():
        folder.mkdir(parents=True)
        folder.chmod(0o777)


def host_check() -> str | None:
    """Why this host cannot run the sandboxed local backend, or ``None`` if it can."""
    if os.geteuid() != 0:
        return (
            "the local backend runs each user under an account of their own, which needs the"
            " hub to run as root (sudo scripts/demo, or panosc-portal serve as root); or use"
            " spawner.backend: docker"
        )
    if platform.machine() != "x86_64":
        return (
            f"the local backend's seccomp filter is written for x86_64, not {platform.machine()};"
            " use spawner.backend: docker"
        )
    missing = [tool for tool in ("bwrap", "setpriv", "useradd") if shutil.which(tool) is None]
    if missing:
        return (
            f"the local backend's sandbox needs {', '.join(missing)}:"
            " apt-get install bubblewrap util-linux passwd"
        )
    return None


async def run_bounded(
    argv: Sequence[str], fds: Sequence[int], env: dict[str, str], timeout: float, limits: Limits
) -> tuple[int, bytes, bytes]:
    """Run a short sandboxed command: exit code, output and errors, each cut at 1 MB.

    A command that outlives ``timeout`` is killed (with its whole sandbox) and reported as
    failed, so nothing a user put in their home can hold the hub up.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        pass_fds=fds,
        preexec_fn=limits.apply,
        start_new_session=True,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )

    async def head(stream: asyncio.StreamReader) -> bytes:
        data = b""
        while len(data) < OUTPUT_LIMIT and (more := await stream.read(OUTPUT_LIMIT - len(data))):
            data += more
        while await stream.read(CHUNK):  # drain the rest, so the command never blocks
            pass
        return data

    try:
        out, err = await asyncio.wait_for(
            asyncio.gather(head(process.stdout), head(process.stderr)), timeout
        )
        return await process.wait(), out, err
    except TimeoutError:
        process.kill()
        await process.wait()
        return 1, b"", f"stopped after {timeout:g} s".encode()


class Bridges:
    """The hub's side of a sandbox's network (:mod:`spawner.sandbox_init`): the server's port
    on the host's loopback leads to ``server.sock``, and ``hub.sock`` leads to the hub's API.

    Both sockets live in the server's run folder, which root owns and the sandbox sees
    read-only, so nobody inside can swap a path the hub then uses as root; only the account's
    group may enter it. A sandbox may hold at most :data:`HUB_CONNECTIONS` connections to the
    hub at once, and its server :data:`SERVER_CONNECTIONS` through the proxy: each costs the
    hub descriptors, and one user must not exhaust them for all.
    """

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []

    @property
    def running(self) -> bool:
        return bool(self._servers)

    async def start(self, run: Path, port: int, hub: tuple[str, int], owner: Account) -> None:
        hub_sock = run / "hub.sock"
        hub_sock.unlink(missing_ok=True)
        hub_side = await asyncio.start_unix_server(
            capped(HUB_CONNECTIONS, lambda: asyncio.open_connection(*hub)), path=str(hub_sock)
        )
        # root's folder, so no race: only the account (and root) may connect
        os.chown(hub_sock, 0, owner.gid)
        hub_sock.chmod(0o660)
        server_sock = str(run / "server.sock")
        server_side = await asyncio.start_server(
            capped(SERVER_CONNECTIONS, lambda: asyncio.open_unix_connection(server_sock)),
            "127.0.0.1",
            port,
        )
        self._servers = [hub_side, server_side]

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []


def capped(limit: int, connect: Callable[[], Awaitable[Streams]]) -> Callable:
    """A connection handler that bridges to ``connect``, at most ``limit`` connections at
    once; the ones over are cut at once."""
    open_now = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        if open_now >= limit:
            writer.transport.abort()
            return
        open_now += 1
        try:
            await bridge(reader, writer, connect)
        finally:
            open_now -= 1

    return handle


def server_socket(run: Path) -> socket.socket:
    """The server's listening socket, ``server.sock`` in the root-owned run folder: made by
    the hub and handed to the sandbox's first process as a descriptor (``--server-fd``)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(run / "server.sock"))
    listener.listen(128)
    return listener


def make_run_folder(parent: str, owner: Account) -> Path:
    """A fresh folder for one server's sockets: root's, entered by the account's group only."""
    run = Path(tempfile.mkdtemp(prefix="panosc-", dir=parent))
    os.chown(run, 0, owner.gid)
    run.chmod(0o710)
    return run


__all__ = [
    "RUN",
    "Account",
    "Bridges",
    "Limits",
    "Sandbox",
    "SandboxError",
    "account_name",
    "ensure_account",
    "environment_paths",
    "host_check",
    "make_run_folder",
    "run_bounded",
    "server_socket",
    "take_home",
]
