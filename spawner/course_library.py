"""The hub's course library: where each course's files are, and how they reach a server.

A course is a folder of notebooks with a ``course.yaml`` (:mod:`spawner.course_format` holds the
rules). The hub knows each course a trainer lists in ``portal.yaml`` (:class:`CourseLibrary`): a
folder, or a git repository the hub checks out and fetches again when a student opens the course
link. Starting the course's server (:func:`~spawner.course_format.server_name`) delivers the
course into the student's home, and opening the link again delivers the trainer's updates: the
hub hands the files over as a tar (:func:`course_archive`) and :mod:`spawner.course_delivery`
merges them, where the student's files are, as the student (:func:`delivery_command`).
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError
from traitlets import Dict, Float, List, TraitError, Unicode, default, validate
from traitlets.config import SingletonConfigurable

from spawner import course_delivery
from spawner.course_delivery import COURSE_FILE, STAGING, SyncReport, deliverable_files
from spawner.course_format import CourseSource, check_names, server_names

#: A Python no user can replace in a server image (its virtualenv belongs to the user).
SYSTEM_PYTHON = "/usr/bin/python3"


class CourseUnavailable(Exception):
    """A course cannot be found or fetched; the message names the course and the cause."""


@functools.cache
def _program() -> str:
    """The delivery program's text (:mod:`spawner.course_delivery`), run as ``python -c``."""
    return Path(course_delivery.__file__).read_text(encoding="utf-8")


def delivery_command(course: str, staging: str = "") -> list[str]:
    """The command that delivers a course in a container, as whoever runs it.

    It expects the course unpacked from :func:`course_archive` (into ``STAGING/<staging>``,
    by default the course's name) and delivers it into ``~/courses/<course>/``. The image's
    system Python in isolated mode (``-I``: no current folder, user site or ``PYTHON*``
    variables) and without site-packages (``-S``), so that nothing the student wrote runs in it.
    """
    source, target = str(STAGING / (staging or course)), f"~/courses/{course}"
    return [SYSTEM_PYTHON, "-I", "-S", "-c", _program(), "sync", source, target]


def course_archive(folder: Path, course: str, uid: int, gid: int) -> bytes:
    """The course's deliverable files as a tar to unpack at ``/`` of a container, into
    ``STAGING/<course>`` (``course`` may be any folder name).

    Members, folders included, are owned by ``uid:gid``: the user the delivery runs as, who
    then removes the staging copy, or root, for a container the user already runs code in
    (the hub removes it then).
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
        try:
            check_names(proposal["value"])
        except ValueError as e:
            raise TraitError(str(e)) from None
        for name, source in proposal["value"].items():
            try:
                CourseSource.model_validate(source)
            except ValidationError as e:
                problems = "; ".join(
                    ": ".join([*map(str, err["loc"]), err["msg"].removeprefix("Value error, ")])
                    for err in e.errors()
                )
                raise TraitError(f"course {name!r} ({source!r}): {problems}") from None
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
