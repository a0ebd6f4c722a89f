"""Course delivery: the program that merges a course into a student's ``~/courses/<name>/``.

It runs where the student's files are, as the student: inside their container (Docker,
Kubernetes) or their sandbox (local), started by the hub as
``python -I -S -c <this file's text> sync SOURCE DEST`` (:mod:`spawner.course_library`
builds that command; ``course check`` delivers a course with it too). Isolated mode and no
site-packages: nothing the student can write (their home, a virtualenv they own) is
imported, so this module imports the standard library only (a test holds it to that).

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
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

COURSE_FILE = "course.yaml"
BASE_DIR = ".course"
#: Inside the container: where the hub unpacks a course before :func:`sync` delivers it. Under
#: root's ``/run``, so that the user cannot plant or swap anything there while it is unpacked.
STAGING = PurePosixPath("/run/panosc-course")


def deliverable_files(root: Path) -> dict[str, Path]:
    """The files a course delivers, by POSIX path relative to ``root``.

    Everything but hidden files and folders (``.git``, ``.ipynb_checkpoints``, the merge base),
    caches, anything but a regular file (a symlink could point anywhere on the hub, a pipe
    would block the delivery forever) and ``course.yaml`` itself.
    """
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            regular = stat.S_ISREG(path.lstat().st_mode)  # no link, pipe or device
            if not name.startswith(".") and regular and rel != COURSE_FILE:
                found[rel] = path
    return found


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


def main(argv: list[str] | None = None) -> int:
    """``sync SOURCE DEST``: what the hub execs in a user's server.

    Prints the :class:`SyncReport` as one JSON line. A SOURCE under :data:`STAGING` is the
    hub's unpacked copy, removed once delivered.
    """
    parser = argparse.ArgumentParser(description="Deliver a course into a student's folder.")
    actions = parser.add_subparsers(dest="action", required=True)
    deliver = actions.add_parser("sync")
    deliver.add_argument("source", type=Path)
    deliver.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    dest = args.dest.expanduser()
    try:
        report = sync(args.source, dest)
    finally:
        if args.source.resolve().is_relative_to(STAGING):
            shutil.rmtree(args.source, ignore_errors=True)
    print(json.dumps(asdict(report)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
