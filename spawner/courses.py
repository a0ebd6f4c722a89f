"""Courses: where a course's files come from, and how they reach a student's ``~/courses/<name>/``.

A course is a folder of notebooks with a ``course.yaml`` (:mod:`portal.course` reads it). The
hub knows each course a trainer lists in ``portal.yaml`` (:class:`CourseLibrary`): a folder, or
a git repository the hub checks out and fetches again when a student opens the course link.
Starting the course's server (:func:`server_name`) delivers the course into the student's home,
and opening the link again delivers the trainer's updates.

Delivery merges, the way nbgitpuller does, so that a student never loses an edit.
``~/courses/<name>/.course/`` keeps each file as it was last delivered (the merge base), and
:func:`sync` compares three versions of every file: that base, the student's and the trainer's.

- changed by the trainer only: the trainer's version replaces the file;
- changed by the student only: the student's version stays;
- a notebook changed by both: cells are matched by their id; the student's cells stay, the
  cells only the trainer changed take the trainer's version, the trainer's new cells are
  inserted after the cell they follow, and a cell both changed keeps the student's version
  (nbgitpuller's ``git merge -Xours``, with a cell as the unit instead of a line). Any other
  file changed by both keeps the student's version;
- deleted by the student but still in the course: a fresh copy comes back;
- added by the trainer where the student has a file of their own by that name: the student's
  file is renamed ``<name>__<YYYYmmddHHMMSS><ext>`` and the trainer's is delivered;
- deleted by the trainer: the file goes too, unless the student changed it.

This module works on both sides of the container boundary: the hub imports it, and the server
image's own Python runs it as a program (``python -c <this file's text> sync ...``) to deliver
the course inside the student's container, where the files are. It therefore imports only the
standard library and traitlets (which every Jupyter image has); ``course check`` also uses it
there to execute the notebooks with nbclient (:func:`execute`).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from traitlets import Dict, Float, List, TraitError, Unicode, default, validate
from traitlets.config import SingletonConfigurable

COURSE_FILE = "course.yaml"
SERVER_PREFIX = "course-"
#: A course name: part of a URL and a folder name, and the start of its server's name.
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
#: Inside ``~/courses/<name>/``: each file as last delivered, the base of the next merge.
BASE_DIR = ".course"
#: Inside the container: where the hub unpacks a course before :func:`sync` delivers it.
STAGING = PurePosixPath("/tmp/panosc-course")


class CourseUnavailable(Exception):
    """A course cannot be found or fetched; the message names the course and the cause."""


def deliverable_files(root: Path) -> dict[str, Path]:
    """The files a course delivers, by POSIX path relative to ``root``.

    Everything but hidden files and folders (``.git``, ``.ipynb_checkpoints``, the merge base),
    caches, symlinks (which could point anywhere on the hub) and ``course.yaml`` itself.
    """
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if not name.startswith(".") and not path.is_symlink() and rel != COURSE_FILE:
                found[rel] = path
    return found


# -- the merge (runs in the student's container) ----------------------------------------------


@dataclass
class SyncReport:
    """What one delivery did to each file (POSIX paths relative to the course folder)."""

    added: list[str] = field(default_factory=list)  # new in the course
    updated: list[str] = field(default_factory=list)  # the trainer's new version; unedited
    merged: list[str] = field(default_factory=list)  # notebooks: both sides' cell changes
    kept: list[str] = field(default_factory=list)  # the student's edit wins over the trainer's
    restored: list[str] = field(default_factory=list)  # deleted by the student: a fresh copy
    renamed: dict[str, str] = field(default_factory=dict)  # the student's own file -> new name
    removed: list[str] = field(default_factory=list)  # gone from the course, unedited

    def summary(self) -> str:
        """One line for the spawn page and the logs."""
        counts = {k: len(v) for k, v in asdict(self).items() if v}
        return ", ".join(f"{n} {k}" for k, n in counts.items()) or "already up to date"


def _write(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically, so that a crash never leaves half a notebook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _aside(path: Path, now: datetime) -> Path:
    """Where nbgitpuller moves a student's file out of a new course file's way."""
    return path.with_name(f"{path.stem}__{now:%Y%m%d%H%M%S}{path.suffix}")


def _cell_text(cell: dict[str, Any]) -> tuple[str, str]:
    """What makes a cell edited: its type and source, not its outputs or execution count."""
    source = cell.get("source", "")
    return cell.get("cell_type", ""), "".join(source) if isinstance(source, list) else source


def merge_notebooks(base: bytes, mine: bytes, theirs: bytes) -> bytes | None:
    """The student's notebook with the trainer's cell changes merged in; ``None`` if impossible.

    Cells are matched by id (nbformat 4.5), so a notebook whose cells lack ids cannot be merged
    and the caller keeps the student's version. See the module docstring for the rule.
    """
    try:
        notebooks = [json.loads(text) for text in (base, mine, theirs)]
        cells = [nb["cells"] for nb in notebooks]
        ids = [[c["id"] for c in side] for side in cells]
    except (ValueError, KeyError, TypeError):
        return None
    base_cells = dict(zip(ids[0], cells[0], strict=True))
    theirs_cells = dict(zip(ids[2], cells[2], strict=True))
    merged = []
    for cell in cells[1]:
        old = base_cells.get(cell["id"])
        if old is None:  # the student's own cell
            merged.append(cell)
            continue
        new = theirs_cells.get(cell["id"])
        edited = _cell_text(cell) != _cell_text(old)
        if new is None:  # the trainer removed it: it goes, unless the student edited it
            if edited:
                merged.append(cell)
        elif not edited and _cell_text(new) != _cell_text(old):
            merged.append(new)
        else:
            merged.append(cell)
    present = {c["id"] for c in merged} | set(ids[1])
    for index, cell in enumerate(cells[2]):
        if cell["id"] in base_cells or cell["id"] in present:
            continue
        before = [c["id"] for c in cells[2][:index]]
        at = 0
        for position, kept in enumerate(merged):
            if kept["id"] in before:
                at = position + 1
        merged.insert(at, cell)
        present.add(cell["id"])
    notebook = {**notebooks[1], "cells": merged}
    return (json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _reconcile(
    rel: str, old: bytes | None, new: bytes | None, local: Path, report: SyncReport, now: datetime
) -> None:
    """Bring one file of the student's copy up to date: ``old`` is the base, ``new`` the course."""
    mine = local.read_bytes() if local.is_file() else None
    if new is None:
        if mine is not None and mine == old:
            local.unlink()
            report.removed.append(rel)
        elif mine is not None:
            report.kept.append(rel)
    elif old is None:
        if mine is not None and mine != new:
            aside = _aside(local, now)
            local.rename(aside)
            report.renamed[rel] = aside.name
        if mine != new:
            _write(local, new)
            report.added.append(rel)
    elif mine is None:
        _write(local, new)
        report.restored.append(rel)
    elif mine == old:
        if new != old:
            _write(local, new)
            report.updated.append(rel)
    elif new not in (old, mine):
        merged = merge_notebooks(old, mine, new) if rel.endswith(".ipynb") else None
        if merged is None:
            report.kept.append(rel)
        else:
            _write(local, merged)
            report.merged.append(rel)


def sync(source: Path, dest: Path, now: datetime | None = None) -> SyncReport:
    """Deliver the course in ``source`` into the student's ``dest``, merging (module docstring)."""
    now = now or datetime.now()
    base_dir = dest / BASE_DIR
    theirs = deliverable_files(source)
    base = deliverable_files(base_dir) if base_dir.is_dir() else {}
    report = SyncReport()
    for rel in sorted(theirs.keys() | base.keys()):
        new = theirs[rel].read_bytes() if rel in theirs else None
        old = base[rel].read_bytes() if rel in base else None
        _reconcile(rel, old, new, dest / rel, report, now)
        if new is None:
            (base_dir / rel).unlink()
        elif new != old:
            _write(base_dir / rel, new)
    return report


def execute(folder: Path, notebooks: list[str], timeout: int) -> Iterator[dict[str, Any]]:
    """Run each notebook in ``folder`` with nbclient, in order; one result per notebook.

    A failing notebook stops at its first failing cell, which the result names (1-based, as a
    person counts cells) with the error and the cell's source. Used by ``course check``.
    """
    import nbformat  # the image's, imported here: the hub never runs notebooks
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    for name in notebooks:
        path = folder / name
        started = time.monotonic()
        result: dict[str, Any] = {"notebook": name, "ok": True}
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(path.parent)}},
        )
        cell_number = None
        try:
            with client.setup_kernel():
                for index, cell in enumerate(nb.cells):
                    cell_number = index + 1
                    client.execute_cell(cell, index)
        except Exception as e:  # a failing cell, a timeout, a dead kernel: all name the cell
            error = (
                f"{e.ename}: {e.evalue}"
                if isinstance(e, CellExecutionError)
                else f"{type(e).__name__}: {e}"
            )
            source = nb.cells[cell_number - 1].source if cell_number else ""
            result.update(ok=False, cell=cell_number, error=error, source=source)
        result["seconds"] = round(time.monotonic() - started, 1)
        yield result


def main(argv: list[str] | None = None) -> int:
    """``sync SOURCE DEST`` or ``run SOURCE DEST NOTEBOOK...``: what the hub execs in a container.

    Prints the :class:`SyncReport` as one JSON line, then (``run``) one JSON line per notebook.
    A SOURCE under :data:`STAGING` is the hub's unpacked copy, removed once delivered.
    """
    parser = argparse.ArgumentParser(description="Deliver a course into a student's folder.")
    actions = parser.add_subparsers(dest="action", required=True)
    deliver, run = actions.add_parser("sync"), actions.add_parser("run")
    for action in (deliver, run):
        action.add_argument("source", type=Path)
        action.add_argument("dest", type=Path)
    run.add_argument("notebooks", nargs="+")
    run.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)
    dest = args.dest.expanduser()
    try:
        report = sync(args.source, dest)
    finally:
        if args.source.resolve().is_relative_to(STAGING):
            shutil.rmtree(args.source, ignore_errors=True)
    print(json.dumps(asdict(report)), flush=True)
    if args.action == "run":
        for result in execute(dest, args.notebooks, args.timeout):
            print(json.dumps(result), flush=True)
    return 0


# -- the hub side -----------------------------------------------------------------------------


@functools.cache
def _program() -> str:
    """This module's text: the program the server image's Python runs."""
    return Path(__file__).read_text(encoding="utf-8")


def container_command(action: str, course: str, *args: str) -> list[str]:
    """The command that delivers (``sync``) or checks (``run NOTEBOOK...``) a course in a container.

    It expects the course unpacked from :func:`course_archive` and delivers it into
    ``~/courses/<course>/`` of whoever runs it.
    """
    return ["python", "-c", _program(), action, str(STAGING / course), f"~/courses/{course}", *args]


def course_archive(folder: Path, course: str, uid: int, gid: int) -> bytes:
    """The course's deliverable files as a tar to unpack at ``/`` of a container.

    Members, folders included, are owned by ``uid:gid``, the user the delivery runs as, so
    that it can remove the staging copy afterwards.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        staging = STAGING / course
        folders = [staging.parent, staging]
        files = deliverable_files(folder)
        for rel in files:
            for parent in reversed(PurePosixPath(rel).parents[:-1]):
                if staging / parent not in folders:
                    folders.append(staging / parent)
        for name in folders:
            info = tarfile.TarInfo(str(name).lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            info.uid, info.gid = uid, gid
            tar.addfile(info)
        for rel, path in files.items():
            info = tarfile.TarInfo(str(staging / rel).lstrip("/"))
            data = path.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o644, int(path.stat().st_mtime)
            info.uid, info.gid = uid, gid
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_sync_report(output: str) -> SyncReport:
    """The report a delivery printed (its first output line)."""
    return SyncReport(**json.loads(output.splitlines()[0]))


def _git(*args: str, cwd: Path | None = None) -> None:
    """Run git without ever prompting (no terminal on the hub); failures name git's words."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise CourseUnavailable(f"git {args[0]} failed: {done.stderr.strip() or done.stdout}")


def update_checkout(url: str, ref: str | None, folder: Path) -> None:
    """Make ``folder`` a clean checkout of ``ref`` (default: the remote's HEAD) of ``url``."""
    if not (folder / ".git").is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--quiet", *(["--branch", ref] if ref else []), "--", url, str(folder))
        return
    _git("fetch", "--quiet", "origin", ref or "HEAD", cwd=folder)
    _git("checkout", "--quiet", "--force", "--detach", "FETCH_HEAD", cwd=folder)
    _git("clean", "--quiet", "-ffdx", cwd=folder)


def server_name(course: str) -> str:
    """The named server a course runs in, one per course and student: ``course-<name>``.

    JupyterHub 6 takes a server name only if it is a safe slug (30 characters at most; lower-case
    letters, digits and single hyphens; a letter first, no hyphen last) and answers 400 to a
    link to any other. A course name that would break that rule (over 23 characters, or with
    ``--``) gets JupyterHub's own shortening instead: a readable start and a hash of the whole
    name, ``course-tomography-rec-88075728``. So every course name works; since a hash cannot
    be read back, :func:`course_of_server` looks the course up rather than parsing the name.
    """
    # Imported here: the containers run this module with the standard library and traitlets.
    from jupyterhub.slugs import is_valid_safe_slug, safe_slug

    return safe_slug(SERVER_PREFIX + course, is_valid=is_valid_safe_slug)


def server_names(courses: Iterable[str]) -> dict[str, str]:
    """Server name -> course, for each of ``courses``: how a server leads back to its course.

    Raises :class:`ValueError`, naming both, when two courses would share a server: in practice
    only when a trainer names a course after another one's shortened name.
    """
    found: dict[str, str] = {}
    for course in courses:
        server = server_name(course)
        other = found.setdefault(server, course)
        if other != course:
            raise ValueError(
                f"courses {other!r} and {course!r} would both run in the server {server!r};"
                " rename one of them"
            )
    return found


def course_of_server(server: str) -> str | None:
    """The course a server belongs to, or ``None`` for every other server.

    Found among the hub's configured courses (:class:`CourseLibrary`, which every portal
    spawner configures when the hub creates it), never read off the name. The servers of a
    course no longer listed belong to none: delivery leaves them alone.
    """
    return server_names(CourseLibrary.instance().courses).get(server)


class CourseLibrary(SingletonConfigurable):
    """The courses trainers publish on this hub, shared by the course pages and the spawners.

    ``portal.yaml``'s ``courses:`` section sets these traits; a site can also set
    ``c.CourseLibrary.courses`` in its own ``jupyterhub_config.py``.
    """

    courses = Dict(
        key_trait=Unicode(),
        value_trait=Dict(),
        config=True,
        help="""Course name -> where the course folder is.

        ``{"folder": "/srv/courses/xrf"}`` or ``{"git": URL, "ref": "main", "subdir": "xrf"}``
        (``ref`` and ``subdir`` optional). Names are lower-case letters, digits and '-'.
        """,
    )
    trainer_groups = List(
        Unicode(),
        config=True,
        help="Groups (from the identity claims) whose members see who started each course.",
    )
    checkout_dir = Unicode(config=True, help="Where the hub keeps its checkouts of git courses.")
    update_interval = Float(
        60.0,
        config=True,
        help="Seconds after fetching a git course during which opening it does not fetch again.",
    )

    @default("checkout_dir")
    def _default_checkout_dir(self) -> str:
        return os.path.abspath("courses")

    @validate("courses")
    def _valid_courses(self, proposal: dict[str, Any]) -> dict[str, dict[str, str]]:
        for name, source in proposal["value"].items():
            if not NAME.fullmatch(name):
                raise TraitError(f"course name {name!r}: use lower-case letters, digits and '-'")
            keys = set(source)
            if keys != {"folder"} and not ("git" in keys and keys <= {"git", "ref", "subdir"}):
                raise TraitError(
                    f"course {name!r}: give {{'folder': path}} or {{'git': url, 'ref': ..., "
                    f"'subdir': ...}}, not {source!r}"
                )
        try:
            server_names(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from None
        return proposal["value"]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._git_lock = threading.Lock()  # one git operation at a time in the checkouts
        self._fetched: dict[str, float] = {}  # course -> time.monotonic() of its last fetch

    def folder(self, name: str, update: bool = False) -> Path:
        """The course's folder on the hub.

        A git course is cloned when missing and, with ``update``, fetched again unless that
        happened less than ``update_interval`` seconds ago: a class of students opening the
        link together costs one fetch.
        """
        source = self.courses.get(name)
        if source is None:
            raise CourseUnavailable(f"there is no course {name!r} on this portal")
        if "folder" in source:
            path = Path(source["folder"])
        else:
            checkout = Path(self.checkout_dir) / name
            with self._git_lock:
                last = self._fetched.get(name, -float("inf"))
                stale = time.monotonic() - last >= self.update_interval
                if not (checkout / ".git").is_dir() or (update and stale):
                    update_checkout(source["git"], source.get("ref"), checkout)
                    self._fetched[name] = time.monotonic()
            path = checkout / source.get("subdir", "")
        if not (path / COURSE_FILE).is_file():
            raise CourseUnavailable(f"course {name!r}: {path} has no {COURSE_FILE}")
        return path


if __name__ == "__main__":
    sys.exit(main())
