"""``panosc-portal images export``: unpack environment images into a shared folder.

On a Slurm cluster an environment is the same image as on Docker and Kubernetes, unpacked
to a folder every compute node mounts (as Apptainer's sandboxes and Charliecloud's image
directories are) and used read-only as the root of each job's sandbox
(:mod:`spawner.slurm_job`). Each environment becomes ``<folder>/<name>/``, with
``.panosc-environment.json`` naming the image, its id (the provenance record's digest) and
the ``PATH`` its configuration sets.

An unpack goes to ``<name>.partial`` first and replaces the old folder only when
complete, so jobs starting meanwhile see the old environment whole or the new one whole;
an environment whose image did not change is left as it is.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def export(name: str, image: str, folder: Path) -> bool:
    """Unpack ``image`` to ``folder/name``; False when it was current already."""
    facts = image_facts(image)
    target = folder / name
    try:
        if json.loads((target / UNPACKED_FILE).read_text())["id"] == facts["id"]:
            return False
    except (OSError, ValueError, KeyError):
        pass
    partial = folder / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    container = _docker("create", image, "true")
    try:
        with subprocess.Popen(["docker", "export", container], stdout=subprocess.PIPE) as out:
            untar = subprocess.run(
                ["tar", "-x", "-C", str(partial), "--exclude=./dev/*", "--exclude=dev/*"],
                stdin=out.stdout,
                capture_output=True,
            )
        if out.returncode or untar.returncode:
            raise ExportError(f"unpacking {image} failed: {untar.stderr.decode()[-400:]}")
    finally:
        _docker("rm", container)
    (partial / UNPACKED_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    old = folder / f"{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    partial.rename(target)
    shutil.rmtree(old, ignore_errors=True)
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
