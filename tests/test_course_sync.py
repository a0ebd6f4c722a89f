"""Course delivery: the merge rule (spawner.course_delivery.sync), the container program, git
courses (spawner.course_library).

Everything here runs on the host, without Docker: the program is run the way the spawner runs
it in a container (``python -c <module text> sync ...``), by this Python.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tarfile
import uuid
from datetime import datetime
from io import BytesIO
from pathlib import Path

import pytest
from traitlets import TraitError

from spawner import course_delivery
from spawner.course_delivery import BASE_DIR, STAGING, deliverable_files, sync
from spawner.course_library import (
    CourseLibrary,
    CourseUnavailable,
    course_archive,
    delivery_command,
    read_sync_report,
)
from tests.support.notebooks import notebook

NOW = datetime(2026, 3, 4, 5, 6, 7)


def cells(path: Path) -> list[tuple[str, str]]:
    return [(c["id"], c["source"]) for c in json.loads(path.read_bytes())["cells"]]


def write(root: Path, files: dict[str, bytes | None]) -> None:
    """Set files under ``root``; ``None`` deletes one."""
    for rel, data in files.items():
        path = root / rel
        if data is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


@pytest.fixture
def course(tmp_path: Path) -> Path:
    folder = tmp_path / "course"
    write(
        folder,
        {
            "course.yaml": b"title: t\n",
            "intro.ipynb": notebook(("a", "import numpy"), ("b", "x = 1"), ("c", "print(x)")),
            "data/table.csv": b"x,y\n1,2\n",
            "notes.md": b"# notes\n",
            ".hidden": b"secret",
            ".git/config": b"[core]",
            "__pycache__/x.pyc": b"\0",
        },
    )
    (folder / "escape.txt").symlink_to("/etc/hostname")
    return folder


@pytest.fixture
def student(tmp_path: Path) -> Path:
    return tmp_path / "home" / "courses" / "intro"


def test_course_files_leave_out_hidden_caches_symlinks_and_course_yaml(course: Path) -> None:
    assert sorted(deliverable_files(course)) == ["data/table.csv", "intro.ipynb", "notes.md"]


def test_first_delivery_copies_the_course_and_remembers_it(course, student) -> None:
    report = sync(course, student, NOW)
    assert report.added == ["data/table.csv", "intro.ipynb", "notes.md"]
    assert sorted(deliverable_files(student)) == report.added
    assert sorted(deliverable_files(student / BASE_DIR)) == report.added
    assert sync(course, student, NOW).summary() == "already up to date"


def test_unedited_files_take_the_trainers_update(course, student) -> None:
    sync(course, student, NOW)
    write(course, {"notes.md": b"# notes, corrected\n"})
    report = sync(course, student, NOW)
    assert report.updated == ["notes.md"] and report.summary() == "1 updated"
    assert (student / "notes.md").read_bytes() == b"# notes, corrected\n"


def test_an_edit_survives_when_the_trainer_changes_nothing(course, student) -> None:
    sync(course, student, NOW)
    write(student, {"notes.md": b"# my notes\n"})
    assert sync(course, student, NOW).summary() == "already up to date"
    assert (student / "notes.md").read_bytes() == b"# my notes\n"


def test_a_notebook_both_changed_is_merged_cell_by_cell(course, student) -> None:
    write(
        course,
        {
            "intro.ipynb": notebook(
                ("a", "import numpy"), ("b", "x = 1"), ("c", "print(x)"), ("d", "y = 2")
            )
        },
    )
    sync(course, student, NOW)
    # The student edits b and d, adds a cell after b, and runs the notebook (outputs on a).
    mine = json.loads(
        notebook(
            ("a", "import numpy"),
            ("b", "x = 41"),
            ("s", "x += 1"),
            ("c", "print(x)"),
            ("d", "y = 3"),
        )
    )
    mine["cells"][0]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "hi"}]
    write(student, {"intro.ipynb": json.dumps(mine).encode()})
    # The trainer edits a, b (a conflict) and c, deletes d, and adds e after c and f at the top.
    write(
        course,
        {
            "intro.ipynb": notebook(
                ("f", "%matplotlib inline"),
                ("a", "import numpy as np"),
                ("b", "x = 2"),
                ("c", "print('x =', x)"),
                ("e", "print('done')"),
            )
        },
    )
    report = sync(course, student, NOW)
    assert report.merged == ["intro.ipynb"]
    assert cells(student / "intro.ipynb") == [
        ("f", "%matplotlib inline"),  # new, first in the trainer's: first here
        ("a", "import numpy as np"),  # only the trainer changed it
        ("b", "x = 41"),  # both changed it: the student's wins
        ("s", "x += 1"),  # the student's own cell
        ("c", "print('x =', x)"),
        ("e", "print('done')"),  # new, after c
        ("d", "y = 3"),  # deleted by the trainer, but edited by the student
    ]
    merged = json.loads((student / "intro.ipynb").read_bytes())
    assert merged["cells"][1]["outputs"] == [], "a replaced cell brings no stale output"
    assert merged["metadata"] == mine["metadata"]
    # The next delivery merges from the trainer's version, so nothing comes back twice.
    assert sync(course, student, NOW).summary() == "already up to date"


def test_a_cell_the_trainer_deleted_goes_unless_edited_and_outputs_are_no_edit(
    course, student
) -> None:
    sync(course, student, NOW)
    ran = notebook(("a", "import numpy"), ("b", "x = 1"), ("c", "print(x)"), execution_count=1)
    write(student, {"intro.ipynb": ran})
    write(course, {"intro.ipynb": notebook(("a", "import numpy"), ("c", "print(x)"))})
    assert sync(course, student, NOW).merged == ["intro.ipynb"]
    assert cells(student / "intro.ipynb") == [("a", "import numpy"), ("c", "print(x)")]
    assert json.loads((student / "intro.ipynb").read_bytes())["cells"][0]["execution_count"] == 1


@pytest.mark.parametrize(
    ("name", "mine", "theirs"),
    [
        ("notes.md", b"# mine\n", b"# theirs\n"),
        ("intro.ipynb", b'{"cells": [{"source": "no id"}]}', notebook(("a", "new"))),
    ],
    ids=["plain-file", "notebook-without-cell-ids"],
)
def test_what_cannot_be_merged_keeps_the_students_version(
    course, student, name: str, mine: bytes, theirs: bytes
) -> None:
    sync(course, student, NOW)
    write(student, {name: mine})
    write(course, {name: theirs})
    assert sync(course, student, NOW).kept == [name]
    assert (student / name).read_bytes() == mine


def test_a_deleted_file_comes_back_fresh(course, student) -> None:
    sync(course, student, NOW)
    write(student, {"intro.ipynb": None})
    assert sync(course, student, NOW).restored == ["intro.ipynb"]
    assert (student / "intro.ipynb").read_bytes() == (course / "intro.ipynb").read_bytes()


def test_a_students_file_in_the_way_of_a_new_course_file_is_renamed(course, student) -> None:
    sync(course, student, NOW)
    write(student, {"part2.ipynb": b"my own part 2"})
    write(course, {"part2.ipynb": notebook(("p", "part 2"))})
    report = sync(course, student, NOW)
    assert report.renamed == {"part2.ipynb": "part2__20260304050607.ipynb"}
    assert report.added == ["part2.ipynb"]
    assert (student / "part2__20260304050607.ipynb").read_bytes() == b"my own part 2"
    assert cells(student / "part2.ipynb") == [("p", "part 2")]


def test_files_the_trainer_deletes_go_unless_the_student_changed_them(course, student) -> None:
    sync(course, student, NOW)
    write(student, {"data/table.csv": b"x,y\n1,3\n"})
    write(course, {"data/table.csv": None, "notes.md": None})
    report = sync(course, student, NOW)
    assert (report.removed, report.kept) == (["notes.md"], ["data/table.csv"])
    assert not (student / "notes.md").exists()
    assert (student / "data/table.csv").read_bytes() == b"x,y\n1,3\n"
    assert sorted(deliverable_files(student / BASE_DIR)) == ["intro.ipynb"]


def test_the_container_program_delivers_and_consumes_its_staging_copy(course, tmp_path) -> None:
    """What the spawner execs: unpack the archive at /, run ``python -c <module> sync``."""
    name = f"test-{uuid.uuid4().hex[:8]}"
    archive = course_archive(course, name, os.getuid(), os.getgid())
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert {(m.uid, m.gid) for m in members} == {(os.getuid(), os.getgid())}
        assert f"{STAGING}/{name}/data".lstrip("/") in [m.name for m in members if m.isdir()]
        tar.extractall("/", filter="data")
    staging = STAGING / name
    assert Path(staging, "intro.ipynb").is_file()
    command = delivery_command(name)
    env = {**os.environ, "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, text=True, check=True
    )
    report = read_sync_report(done.stdout)
    assert report.added == ["data/table.csv", "intro.ipynb", "notes.md"]
    assert (tmp_path / "courses" / name / "intro.ipynb").is_file()
    assert not Path(staging).exists(), "the staging copy is removed once delivered"


def test_the_program_never_removes_a_source_outside_staging(course, tmp_path) -> None:
    command = delivery_command("x")
    program = command[command.index("-c") + 1]
    subprocess.run(
        [sys.executable, "-c", program, "sync", str(course), str(tmp_path / "out")], check=True
    )
    assert (course / "intro.ipynb").is_file()


def test_the_delivery_program_imports_the_standard_library_only() -> None:
    """Every import, at the top or in a function: it runs as ``python -I -S`` in a user's server,
    where any other module would be the student's. (The delivery tests above run it so, without
    site-packages, which a top-level import of anything else would fail.)"""
    tree = ast.parse(Path(course_delivery.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names
    }
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names}
    assert not outside, f"spawner/course_delivery.py imports {sorted(outside)}"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert "importlib" not in imported and "__import__" not in names, "no import by name"


# -- the course library: folders and git repositories -----------------------------------------


def git(*args: str, cwd: Path) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    write(repo, {"xrf/course.yaml": b"title: one\n", "xrf/a.ipynb": notebook(("a", "1"))})
    git("init", "--quiet", "--initial-branch", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "--quiet", "-m", "first", cwd=repo)
    return repo


def library(tmp_path: Path, **courses: dict[str, str]) -> CourseLibrary:
    return CourseLibrary(courses=courses, checkout_dir=str(tmp_path / "checkouts"))


def test_a_folder_course_is_its_folder(course, tmp_path) -> None:
    lib = library(tmp_path, intro={"folder": str(course)}, empty={"folder": str(tmp_path)})
    assert lib.folder("intro") == course
    with pytest.raises(CourseUnavailable, match=r"has no course\.yaml"):
        lib.folder("empty")
    with pytest.raises(CourseUnavailable, match="there is no course 'nope'"):
        lib.folder("nope")


def test_a_git_course_is_cloned_then_fetched_on_update(repository, tmp_path) -> None:
    source = {"git": f"file://{repository}", "ref": "main", "subdir": "xrf"}
    lib = library(tmp_path, xrf=source)
    lib.update_interval = 0
    folder = lib.folder("xrf")
    assert folder == tmp_path / "checkouts" / "xrf" / "xrf"
    assert (folder / "course.yaml").read_text() == "title: one\n"
    write(repository, {"xrf/course.yaml": b"title: two\n"})
    git("commit", "--quiet", "-am", "second", cwd=repository)
    assert (lib.folder("xrf") / "course.yaml").read_text() == "title: one\n", "no update asked"
    write(folder, {"stray.txt": b"left by someone"})
    assert (lib.folder("xrf", update=True) / "course.yaml").read_text() == "title: two\n"
    assert not (folder / "stray.txt").exists(), "a checkout is clean after a fetch"


def test_a_git_course_is_fetched_at_most_once_per_interval(repository, tmp_path) -> None:
    lib = library(tmp_path, xrf={"git": str(repository), "subdir": "xrf"})
    lib.folder("xrf")
    write(repository, {"xrf/course.yaml": b"title: two\n"})
    git("commit", "--quiet", "-am", "second", cwd=repository)
    assert (lib.folder("xrf", update=True) / "course.yaml").read_text() == "title: one\n"


def test_git_failures_name_the_cause(tmp_path) -> None:
    lib = library(tmp_path, gone={"git": str(tmp_path / "no-such-repo")})
    with pytest.raises(CourseUnavailable, match=r"git clone failed: .*no-such-repo"):
        lib.folder("gone")


@pytest.mark.parametrize(
    "courses",
    [{"Bad_Name": {"folder": "/x"}}, {"x": {"folder": "/x", "git": "y"}}, {"x": {"ref": "main"}}],
)
def test_the_library_refuses_bad_course_entries(courses) -> None:
    with pytest.raises(TraitError):
        CourseLibrary(courses=courses)
