"""The Slurm job's first program, on the compute node, as the user: it builds the sandbox.

Standard library only: the hub ships it inside the job script (:func:`spawner.slurm.
job_script`) and the node's own ``python3`` runs it before anything of the user's does.
It is given the job's plan (from the hub, which asked the catalogue at spawn time) and:

1. opens the home and each planned folder again *on this node*, component by component
   without following any symlink, and checks that each is the folder the hub checked
   (same inode), so a folder swapped on the shared filesystem after the check is refused;
2. picks a free port on the node and tells the hub (``POST /hub/api/batchspawner`` with
   the server's own token: the hub takes a port and nothing else, :mod:`portal.slurm_port`);
3. replaces itself with bubblewrap: the environment (an image unpacked on shared storage)
   read-only as the root, the home read-write, exactly the planned datasets read-only under
   ``~/datasets`` with ``datasets.json``, the processed areas writable, a private ``/tmp``,
   the portal's seccomp filter, and nothing else of the node: not the data tree, not other
   homes, not the hub's state, not Slurm's or munge's sockets.

Unlike the local backend the sandbox keeps the node's network: the server must be reached
by the hub's proxy at the node's address, as on any cluster.

The same program builds the sandbox of the session's provenance record (a job step the hub
runs in the job, :meth:`spawner.slurm.PortalSlurmSpawner.run_record`): its plan mounts only
the processed areas, reports no port, and runs the record program with the facts the hub
passes as further arguments. One way of building a sandbox, so the record sees no more of
the node than the server does.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import urllib.request
from pathlib import PurePosixPath

from spawner.nofollow import open_folder

#: Top-level folders of an environment's root that the sandbox makes itself instead.
OWN = frozenset({"proc", "dev", "tmp", "home", "run", "sys"})
API_TIMEOUT = 30


class JobError(Exception):
    """The sandbox cannot be built as planned; the message is what the job log shows."""


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


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


def sandbox_command(plan: dict, port: int) -> tuple[list[str], dict[str, str]]:
    """The bubblewrap command and the environment the server runs with."""
    home = PurePosixPath(plan["home_target"])
    made = {PurePosixPath("/"), PurePosixPath("/home")}

    def parents(target: PurePosixPath) -> list[str]:
        args = []
        for parent in reversed(target.parents):
            if parent not in made:
                args += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        return args

    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc"]
    args += ["--unshare-uts", "--unshare-cgroup-try", "--hostname", socket.gethostname()]
    args += root_binds(plan["rootfs"])
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/run", "--dir", "/home"]
    for tmp in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", "--tmpfs", tmp]
    home_fd = open_checked(plan["home"], plan.get("home_inode"), "your home")
    args += ["--bind-fd", str(home_fd), str(home)]
    made.add(home)
    datasets = home / "datasets"
    args += ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", str(datasets)]
    made.add(datasets)
    for mount in plan["mounts"]:
        fd = open_checked(mount["source"], mount.get("inode"), mount.get("pid") or "a mount")
        target = home / mount["target"]
        option = "--ro-bind-fd" if mount["read_only"] else "--bind-fd"
        args += [*parents(target), option, str(fd), str(target)]
        made.add(target)
    for name, text in identity_files(plan["rootfs"], plan["env"]["USER"], str(home)).items():
        args += ["--ro-bind-data", str(memfd(name, text.encode())), f"/etc/{name}"]
    manifest = memfd("datasets.json", plan["manifest"].encode())
    args += ["--perms", "0444", "--ro-bind-data", str(manifest), str(datasets / "datasets.json")]
    seccomp = memfd("seccomp", base64.b64decode(plan["seccomp"]))
    args += ["--seccomp", str(seccomp), "--chdir", str(home), "--"]
    args += plan["command"]
    env = {k: v for k, v in os.environ.items() if k.startswith("JUPYTERHUB_")}
    env.update(plan["env"])
    env.update(HOME=str(home), PATH=plan["path"], SHELL="/bin/bash")
    service = env.get("JUPYTERHUB_SERVICE_URL", "")
    if service:  # where the server listens: every address of the node, this port
        scheme, _, rest = service.partition("://")
        env["JUPYTERHUB_SERVICE_URL"] = f"{scheme}://0.0.0.0:{port}/{rest.partition('/')[2]}"
    return args, env


def main(encoded: str, arguments: list[str] | None = None) -> None:
    """Become the sandbox the plan describes, running its command with ``arguments`` added.

    A server's plan (``report_port``) first tells the hub its port; a provenance record's
    does not (the hub is not waiting for a server, and the record's step holds no server
    token). ``arguments`` come from the command line, not the plan: the record's facts may
    be larger than one argument may be (the kernel's limit is 128 kB), so the hub passes
    them in pieces.
    """
    plan = json.loads(base64.b64decode(encoded))
    serving = plan["report_port"]
    port = free_port() if serving else 0
    try:
        argv, env = sandbox_command(plan, port)
        if serving:
            report_port(port, dict(os.environ))
    except (JobError, OSError) as e:
        what = "the session cannot start" if serving else "no sandbox for the record"
        print(f"panosc-portal: {what} on {socket.gethostname()}: {e}", file=sys.stderr)
        sys.exit(1)
    os.execvpe(argv[0], [*argv, *(arguments or ())], env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
