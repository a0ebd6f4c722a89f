"""The Slurm job's first program, on the compute node, as the user: it builds the sandbox.

Standard library only: the hub ships it inside the job script (:func:`spawner.slurm.
job_script`) and the node's own ``python3`` runs it before anything of the user's does.
It is given the job's plan (from the hub, which asked the catalogue at spawn time) and:

1. opens the home and each planned folder again *on this node*, component by component
   without following any symlink, and checks that each is the folder the hub checked
   (same inode), so a folder swapped on the shared filesystem after the check is refused;
2. listens on a free port of the node and tells the hub (``POST /hub/api/batchspawner``
   with the server's own token: the hub takes a port and nothing else,
   :mod:`portal.slurm_port`); the port is held from then on, so nobody else on the node
   can take it before the server is up;
3. starts bubblewrap: the environment (an image unpacked on shared storage) read-only as
   the root, the home read-write, exactly the planned datasets read-only under
   ``~/datasets`` with ``datasets.json``, the processed areas writable, a private ``/tmp``,
   the portal's seccomp filter, and nothing else of the node: not the data tree, not other
   homes, not the hub's state, not Slurm's or munge's sockets;
4. stays, as the sandbox's only way out: the sandbox has a network of its own (every job on
   a node would otherwise share the node's, loopback included, so another user's code
   could connect to whatever a session serves on 127.0.0.1). As on the local backend,
   :mod:`spawner.sandbox_init` bridges it over two Unix sockets in a private run folder:
   the node's port leads to the server, and the hub's API is the one address the sandbox
   reaches.

The same program builds the sandbox of the session's provenance record (a job step the hub
runs in the job, :meth:`spawner.slurm.PortalSlurmSpawner.run_record`): its plan mounts only
the processed areas, reports no port, and runs the record program with the facts the hub
passes as further arguments. One way of building a sandbox, so the record sees no more of
the node than the server does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import shutil
import socket
import sys
import tempfile
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from spawner.nofollow import open_folder
from spawner.sandbox_init import bridge

#: Top-level folders of an environment's root that the sandbox makes itself instead.
OWN = frozenset({"proc", "dev", "tmp", "home", "run", "sys"})
API_TIMEOUT = 30
#: Where the sandbox sees its run folder (the two sockets and the bridging program), and the
#: ports the server and the hub's API have on the sandbox's own loopback.
RUN = PurePosixPath("/run/portal")
SERVER_PORT = 8888
HUB_PORT = 8081


class JobError(Exception):
    """The sandbox cannot be built as planned; the message is what the job log shows."""


def check_identity(plan: dict) -> None:
    """Refuse to run unless this node runs the job as the account the hub made for the user:
    the same name, uid and mark (the hub creates accounts on its own host; a node whose
    directory gives that uid to somebody else would hand them the user's home and data)."""
    uid, account = os.getuid(), plan["env"]["USER"]
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        entry = None
    if entry is None or (entry.pw_name, uid, entry.pw_gecos) != (
        account,
        plan["uid"],
        plan["comment"],
    ):
        found = f"uid {uid} ({entry.pw_name if entry else 'unknown here'})"
        raise JobError(
            f"this node runs the job as {found}, not as the portal's account {account}"
            f" (uid {plan['uid']}): the nodes must know the hub's accounts, same names and uids"
        )


def open_checked(path: str, inode: int | None, what: str) -> int:
    """``path`` opened as :func:`open_folder` does, refused unless it has the inode the hub
    saw (inode only: a shared filesystem's device number differs between machines)."""
    try:
        fd = open_folder(path)
    except OSError as e:
        raise JobError(
            f"{what}: {path} cannot be reached without a symlink ({e.strerror})"
        ) from None
    if inode is not None and os.fstat(fd).st_ino != inode:
        os.close(fd)
        raise JobError(f"{what}: {path} was replaced after the access check; refusing it")
    os.set_inheritable(fd, True)  # for bubblewrap
    return fd


def report_port(port: int, env: dict[str, str]) -> None:
    """Tell the hub where the server will listen, with the server's own API token."""
    request = urllib.request.Request(
        env["JUPYTERHUB_API_URL"].rstrip("/") + "/batchspawner",
        data=json.dumps({"port": port}).encode(),
        headers={
            "Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=API_TIMEOUT) as answer:
        answer.read()


def root_binds(rootfs: str) -> list[str]:
    """bubblewrap arguments showing the environment's top-level folders read-only (its
    links as links), except those the sandbox makes itself."""
    args = []
    for entry in sorted(os.scandir(rootfs), key=lambda e: e.name):
        if entry.name in OWN:
            continue
        if entry.is_symlink():
            args += ["--symlink", os.readlink(entry.path), f"/{entry.name}"]
        elif entry.is_dir(follow_symlinks=False):
            args += ["--ro-bind", entry.path, f"/{entry.name}"]
    return args


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # inherited by bubblewrap
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def identity_files(rootfs: str, user: str, home: str) -> dict[str, str]:
    """The environment's ``passwd``, ``group`` and ``hosts``, with the user's account and
    this node's name added: tools such as TigerVNC's ``vncserver`` look both up, and the
    image knows only its own ``jovyan``."""
    uid, gid, host = os.getuid(), os.getgid(), socket.gethostname()

    def read(name: str) -> str:
        try:
            with open(os.path.join(rootfs, "etc", name)) as f:
                text = f.read()
        except OSError:
            return ""
        return text if not text or text.endswith("\n") else text + "\n"

    return {
        "passwd": read("passwd") + f"{user}:x:{uid}:{gid}::{home}:/bin/bash\n",
        "group": read("group") + f"{user}:x:{gid}:\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{host}\n",
    }


def sandbox_command(
    plan: dict, run: str | None = None
) -> tuple[list[str], dict[str, str], list[int]]:
    """The bubblewrap command, the environment it runs with, and the descriptors it must
    inherit. With ``run`` (a server), the run folder is bound at :data:`RUN` and the
    server's and the hub's addresses are those of the sandbox's own loopback."""
    home = PurePosixPath(plan["home_target"])
    made = {PurePosixPath("/"), PurePosixPath("/home"), PurePosixPath("/run")}
    fds: list[int] = []

    def parents(target: PurePosixPath) -> list[str]:
        args = []
        for parent in reversed(target.parents):
            if parent not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        return args

    def kept(fd: int) -> str:
        fds.append(fd)
        return str(fd)

    args = [plan["bwrap"], "--die-with-parent", "--new-session", "--unshare-pid"]
    args += ["--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    args += ["--hostname", socket.gethostname()]
    args += root_binds(plan["rootfs"])
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/run", "--dir", "/home"]
    for tmp in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", "--tmpfs", tmp]
    home_fd = open_checked(plan["home"], plan.get("home_inode"), "your home")
    args += ["--bind-fd", kept(home_fd), str(home)]
    made.add(home)
    datasets = home / "datasets"
    args += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", str(datasets)]
    made.add(datasets)
    for mount in plan["mounts"]:
        fd = open_checked(mount["source"], mount.get("inode"), mount.get("pid") or "a mount")
        target = home / mount["target"]
        option = "--ro-bind-fd" if mount["read_only"] else "--bind-fd"
        args += [*parents(target), option, kept(fd), str(target)]
        made.add(target)
    for name, text in identity_files(plan["rootfs"], plan["env"]["USER"], str(home)).items():
        args += ["--ro-bind-data", kept(memfd(name, text.encode())), f"/etc/{name}"]
    manifest = kept(memfd("datasets.json", plan["manifest"].encode()))
    args += ["--perms", "0444", "--ro-bind-data", manifest, str(datasets / "datasets.json")]
    seccomp = kept(memfd("seccomp", base64.b64decode(plan["seccomp"])))
    if run is not None:
        args += ["--ro-bind", run, str(RUN)]
    args += ["--seccomp", seccomp, "--chdir", str(home), "--"]
    env = {k: v for k, v in os.environ.items() if k.startswith("JUPYTERHUB_")}
    env.update(plan["env"])
    env.update(HOME=str(home), PATH=plan["path"], SHELL="/bin/bash")
    for key, port in [
        ("JUPYTERHUB_API_URL", HUB_PORT),
        ("JUPYTERHUB_ACTIVITY_URL", HUB_PORT),
        ("JUPYTERHUB_SERVICE_URL", SERVER_PORT),
    ]:
        if env.get(key):  # as the sandbox reaches them: its own loopback, bridged
            env[key] = urlsplit(env[key])._replace(netloc=f"127.0.0.1:{port}").geturl()
    return args, env, fds


async def serve(plan: dict) -> int:
    """A server's job: hold the node's port, tell the hub, run the sandbox with the bridges
    open, and end with it (its exit code)."""
    hub = urlsplit(os.environ["JUPYTERHUB_API_URL"])
    run = tempfile.mkdtemp(prefix="panosc-", dir=os.environ.get("TMPDIR") or "/tmp")  # 0700
    try:
        Path(run, "sandbox_init.py").write_bytes(base64.b64decode(plan["sandbox_init"]))
        inside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        inside.bind(os.path.join(run, "server.sock"))
        inside.listen(128)
        inside.set_inheritable(True)
        public = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        public.bind(("", 0))
        public.listen(128)
        to_hub = await asyncio.start_unix_server(
            lambda r, w: bridge(r, w, lambda: asyncio.open_connection(hub.hostname, hub.port)),
            path=os.path.join(run, "hub.sock"),
        )
        to_server = await asyncio.start_server(
            lambda r, w: bridge(
                r, w, lambda: asyncio.open_unix_connection(os.path.join(run, "server.sock"))
            ),
            sock=public,
        )
        argv, env, fds = sandbox_command(plan, run)
        init = ["python3", "-I", "-S", str(RUN / "sandbox_init.py"), "--run", str(RUN)]
        init += ["--server-fd", str(inside.fileno()), "--hub-port", str(HUB_PORT)]
        init += ["--server-port", str(SERVER_PORT), "--"]
        report_port(public.getsockname()[1], dict(os.environ))
        async with to_hub, to_server:
            process = await asyncio.create_subprocess_exec(
                *argv,
                *init,
                *plan["command"],
                env=env,
                pass_fds=[*fds, inside.fileno()],
                stdin=asyncio.subprocess.DEVNULL,  # ours is the job script's program
            )
            inside.close()
            for fd in fds:
                os.close(fd)
            return await process.wait()
    finally:
        shutil.rmtree(run, ignore_errors=True)


def main(encoded: str, arguments: list[str] | None = None) -> None:
    """Run the sandbox the plan describes, its command with ``arguments`` added.

    A server's plan (``report_port``) is served (:func:`serve`); a provenance record's is
    not (the hub is not waiting for a server, and the record's step holds no server token):
    this program becomes its sandbox. ``arguments`` come from the command line, not the
    plan: the record's facts may be larger than one argument may be (the kernel's limit is
    128 kB), so the hub passes them in pieces.
    """
    plan = json.loads(base64.b64decode(encoded))
    serving = plan["report_port"]
    try:
        check_identity(plan)
        if serving:
            sys.exit(asyncio.run(serve(plan)))
        argv, env, _ = sandbox_command(plan)
    except (JobError, OSError) as e:
        what = "the session cannot start" if serving else "no sandbox for the record"
        print(f"panosc-portal: {what} on {socket.gethostname()}: {e}", file=sys.stderr)
        sys.exit(1)
    os.execve(argv[0], [*argv, *plan["command"], *(arguments or ())], env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
