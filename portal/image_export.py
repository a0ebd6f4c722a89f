"""``panosc-portal images export``: unpack environment images into a shared folder.

On a Slurm cluster an environment is the same image as on Docker and Kubernetes, unpacked
to a folder every compute node mounts (as Apptainer's sandboxes and Charliecloud's image
directories are) and used read-only as the root of each job's sandbox
(:mod:`spawner.slurm_job`). Each environment becomes ``<folder>/<name>/``, with
``.panosc-environment.json`` naming the image, its id (the provenance record's digest) and
the ``PATH`` its configuration sets.

An unpack goes to ``<name>.partial`` first (a folder only root may enter) and replaces the
old folder only when complete, so jobs starting meanwhile see the old environment whole or
the new one whole; the old one stays as ``<name>.previous`` until the next export, so the
sessions running in it keep their files. An environment whose image did not change is left
as it is.

Root unpacks it, but on storage that every node mounts, for every user: before the folder
is put in place everything in it becomes root's, nothing stays setuid, setgid, sticky,
group- or world-writable, and device nodes, FIFOs and sockets are removed
(:func:`sanitise`). Otherwise whoever has the image user's uid on the cluster could change
the code of every session, and any user could run the image's setuid-root programs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from spawner.environments import UNPACKED_FILE, load_environments


class ExportError(Exception):
    """An image cannot be exported; the message says which and what to do."""


def _docker(*argv: str) -> str:
    done = subprocess.run(["docker", *argv], capture_output=True, text=True)
    if done.returncode:
        raise ExportError(f"docker {argv[0]} {argv[-1]}: {done.stderr.strip()[-400:]}")
    return done.stdout.strip()


def image_facts(image: str) -> dict[str, str]:
    """The image's id and the ``PATH`` of its configuration."""
    try:
        raw = _docker("image", "inspect", image)
    except ExportError:
        raise ExportError(
            f"image {image} is not on this Docker engine: build it first"
            " (panosc-portal images build)"
        ) from None
    facts = json.loads(raw)[0]
    env = dict(e.partition("=")[::2] for e in facts["Config"].get("Env") or [])
    return {"image": image, "id": facts["Id"], "path": env.get("PATH", "/usr/bin:/bin")}


#: Version of :func:`sanitise`'s rules, recorded in the unpacked file: a tree without it
#: (an earlier release unpacked it with the image's owners and bits) is unpacked again.
SANITISED = 1


def _settle(path: str, st: os.stat_result) -> None:
    if st.st_uid or st.st_gid:
        os.lchown(path, 0, 0)
    if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & ~0o755:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o755)  # read and run kept, for all


def sanitise(root: Path) -> None:
    """Make the tree under ``root`` root's and writable by root only, without the image's
    setuid, setgid and sticky bits, device nodes, FIFOs and sockets; symlinks stay links
    (owned by root, never followed). Nobody but root may be able to change the tree meanwhile.
    """
    _settle(str(root), root.lstat())
    folders = [str(root)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    folders.append(entry.path)
                elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    os.unlink(entry.path)
                    continue
                _settle(entry.path, st)


def _facts(tree: Path) -> dict:
    try:
        return json.loads((tree / UNPACKED_FILE).read_text())
    except (OSError, ValueError):
        return {}


def export(name: str, image: str, folder: Path) -> bool:
    """Unpack ``image`` to ``folder/name``; False when it was current already."""
    facts = {**image_facts(image), "sanitised": SANITISED}
    target = folder / name
    current = _facts(target)
    if current.get("id") == facts["id"] and current.get("sanitised") == SANITISED:
        return False
    partial = folder / f"{name}.partial"  # root's only: nobody sees the tree before it is safe
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o700)
    partial.chmod(0o700)
    tree = partial / name
    tree.mkdir()
    container = _docker("create", image, "true")
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as out:
            untar = subprocess.run(
                ["tar", "-x", "--no-same-owner", "--no-xattrs", "-C", str(tree),
                 "--exclude=./dev/*", "--exclude=dev/*"],
                stdin=out.stdout,
                capture_output=True,
            )  # fmt: skip
        if out.returncode or untar.returncode:
            raise ExportError(f"unpacking {image} failed: {untar.stderr.decode()[-400:]}")
    finally:
        _docker("rm", container)
    sanitise(tree)
    tree.chmod(0o755)
    (tree / UNPACKED_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    (tree / UNPACKED_FILE).chmod(0o644)
    previous = folder / f"{name}.previous"
    shutil.rmtree(previous, ignore_errors=True)  # sessions still in it had a whole export's time
    shutil.rmtree(folder / f"{name}.old", ignore_errors=True)  # an earlier release's leftover
    if target.exists():
        target.rename(previous)
    tree.rename(target)
    partial.rmdir()
    if previous.exists() and current.get("sanitised") != SANITISED:
        # An earlier release's tree, with the image's owners: not made safe in place, where
        # they could swap a folder for a link under the walk. rmtree does not follow links.
        shutil.rmtree(previous)
    return True


def _export_command(args: argparse.Namespace) -> int:
    environments = load_environments()
    names = args.names or list(environments)
    unknown = [n for n in names if n not in environments]
    if unknown:
        print(
            f"images export: unknown environment(s) {', '.join(unknown)};"
            f" available: {', '.join(environments)}",
            file=sys.stderr,
        )
        return 2
    args.to.mkdir(parents=True, exist_ok=True)
    args.to.chmod(0o755)
    for name in names:
        started = time.monotonic()
        print(f"[export] {name}: unpacking {environments[name].image} ...", flush=True)
        try:
            done = export(name, environments[name].image, args.to)
        except ExportError as e:
            print(f"images export: {e}", file=sys.stderr)
            return 1
        what = "unpacked" if done else "already current"
        print(f"[export] {name}: {what} in {args.to / name} ({time.monotonic() - started:.0f} s)")
        previous = args.to / f"{name}.previous"
        if done and previous.exists():
            print(
                f"[export] {name}: the previous version stays in {previous} for the sessions"
                " still running in it, until the next export of this environment"
            )
    return 0


def add_export_parser(images: argparse._SubParsersAction) -> None:
    """Register ``images export`` under ``panosc-portal images``."""
    e = images.add_parser(
        "export",
        help="unpack environment images into a shared folder, for the Slurm backend",
        description="Unpack the images of images/environments.yaml (all when no name is"
        " given) into FOLDER/<name>/, which every compute node must mount read-only.",
    )
    e.add_argument("names", nargs="*", help="environments to unpack")
    e.add_argument("--to", type=Path, required=True, metavar="FOLDER", help="the shared folder")
    e.set_defaults(func=_export_command)
