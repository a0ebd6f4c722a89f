"""The course format (course.yaml, spawner.course_format), its checks, ``panosc-portal course
check`` (portal.course_check, portal.notebook_runner), and courses: in portal.yaml. The check
runs notebooks in a real image (base) on a real Docker engine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from portal import notebook_runner, render, settings
from portal.cli import main
from portal.course_check import CHECK_LABEL
from portal.notebook_runner import execute
from spawner.course_format import CourseError, load_course, notebook_problems
from spawner.environments import Environment
from tests.support.docker_support import engine, ensure_images
from tests.support.notebooks import notebook

TOUR = "MA1234/ID21/nexus_tour_0001"


def make_course(folder: Path, files: dict[str, bytes], **fields: object) -> Path:
    """A course folder: course.yaml (``fields`` over valid defaults, listing ``files``)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "title": "A course",
        "description": "What it teaches.",
        "environment": "base",
        "notebooks": list(files),
        **fields,
    }
    (folder / "course.yaml").write_text(yaml.safe_dump(doc))
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def problems(folder: Path) -> list[str]:
    with pytest.raises(CourseError) as raised:
        load_course(folder)
    return raised.value.problems


def test_a_valid_course_reads_back(tmp_path: Path) -> None:
    folder = make_course(
        tmp_path / "c", {"b.ipynb": notebook(), "a.ipynb": notebook()}, datasets=[TOUR]
    )
    course = load_course(folder)
    assert (course.title, course.environment) == ("A course", "base")
    assert course.notebooks == ("b.ipynb", "a.ipynb"), "in the trainer's order"
    assert course.datasets == (TOUR,)
    assert course.name == "c"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"titel": "x"},
            "(top level): unknown key 'titel'; valid keys here: title, description, environment,",
        ),
        ({"description": ""}, "course.yaml:1: description: must not be empty"),
        (
            {"environment": "xrd"},
            "course.yaml:2: environment: 'xrd' is not an environment; choose one of base,",
        ),
        ({"notebooks": []}, "course.yaml:3: notebooks: list at least one notebook"),
        ({"notebooks": ["a.ipynb", "a.ipynb"]}, "course.yaml:3: notebooks: listed twice: a.ipynb"),
        ({"notebooks": ["../x.ipynb"]}, "'../x.ipynb' must be a .ipynb path inside the course"),
        ({"notebooks": ["a.ipynb", "b.ipynb"]}, "notebooks: 'b.ipynb' does not exist in"),
        ({"datasets": "MA1234"}, "course.yaml:1: datasets: must be a list, got 'MA1234'"),
    ],
)
def test_course_yaml_problems_name_the_file_and_the_field(tmp_path, fields, message) -> None:
    folder = make_course(tmp_path / "c", {"a.ipynb": notebook()}, **fields)
    found = problems(folder)
    assert any(message in p and p.startswith(str(folder / "course.yaml")) for p in found), found


def test_a_missing_title_is_named(tmp_path: Path) -> None:
    folder = make_course(tmp_path / "c", {"a.ipynb": notebook()})
    doc = yaml.safe_load((folder / "course.yaml").read_text())
    del doc["title"]
    (folder / "course.yaml").write_text(yaml.safe_dump(doc))
    assert problems(folder) == [f"{folder / 'course.yaml'}:1: title: is required but missing"]


def test_an_unlisted_notebook_is_a_problem_so_that_every_notebook_is_checked(tmp_path) -> None:
    folder = make_course(tmp_path / "c", {"a.ipynb": notebook()})
    (folder / "extra").mkdir()
    (folder / "extra" / "b.ipynb").write_bytes(notebook())
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / "a-checkpoint.ipynb").write_bytes(notebook())
    assert problems(folder) == [
        f"{folder / 'course.yaml'}:3: notebooks: extra/b.ipynb is in the folder but not listed;"
        " list it (so that it is checked) or remove it"
    ]


def test_a_folder_without_course_yaml(tmp_path: Path) -> None:
    assert problems(tmp_path) == [
        f"{tmp_path / 'course.yaml'}: no such file; a course folder needs one"
    ]


def test_the_outputs_check_names_each_cell_with_outputs(tmp_path: Path) -> None:
    nb = json.loads(notebook(("a", "x = 1"), ("b", "print(x)"), ("c", "x")))
    nb["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "1\n"}]
    nb["cells"][1]["execution_count"] = 2
    nb["cells"][2]["execution_count"] = 3
    path = tmp_path / "saved.ipynb"
    path.write_text(json.dumps(nb))
    found = notebook_problems(path)
    assert [p.split(": has")[0] for p in found] == [f"{path}: cell 2", f"{path}: cell 3"]
    assert "notebooks are stored without outputs" in found[0]
    assert "jupyter nbconvert --clear-output --inplace saved.ipynb" in found[0]


def test_notebooks_need_cell_ids_to_be_merged(tmp_path: Path) -> None:
    old = json.loads(notebook(("a", "x")))
    old["nbformat_minor"] = 4
    del old["cells"][0]["id"]
    path = tmp_path / "old.ipynb"
    path.write_text(json.dumps(old))
    assert "nbformat 4.4: save it with JupyterLab 3 or later" in notebook_problems(path)[0]
    path.write_text("{not json")
    assert notebook_problems(path)[0].startswith(f"{path}: not a Jupyter notebook")


def test_course_check_catches_a_notebook_saved_with_outputs(tmp_path, capsys) -> None:
    nb = json.loads(notebook(("a", "1 + 1")))
    nb["cells"][0]["outputs"] = [{"output_type": "execute_result", "data": {}, "metadata": {}}]
    folder = make_course(tmp_path / "c", {"ran.ipynb": json.dumps(nb).encode()})
    assert main(["course", "check", "--no-execute", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'ran.ipynb'}: cell 1: has outputs or an execution count" in err


# -- running notebooks in the environment's image ---------------------------------------------


def test_execute_names_the_failing_cell(tmp_path: Path) -> None:
    (tmp_path / "good.ipynb").write_bytes(notebook(("a", "x = 2"), ("b", "assert x == 2")))
    (tmp_path / "bad.ipynb").write_bytes(
        notebook(("a", "x = 2"), ("b", "y = x"), ("c", "1 / 0"), ("d", "z = 1"))
    )
    good, bad = execute(tmp_path, ["good.ipynb", "bad.ipynb"], timeout=60)
    assert good["ok"] and good["notebook"] == "good.ipynb"
    assert (bad["ok"], bad["cell"], bad["source"]) == (False, 3, "1 / 0")
    assert bad["error"] == "ZeroDivisionError: division by zero"


def test_the_notebook_runner_prints_a_json_line_per_notebook(tmp_path: Path) -> None:
    """As course check runs it in the container: ``python -I -c <its text> FOLDER NOTEBOOK...``."""
    (tmp_path / "a.ipynb").write_bytes(notebook(("a", "x = 1")))
    program = Path(notebook_runner.__file__).read_text(encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-I", "-c", program, str(tmp_path), "a.ipynb", "--timeout", "60"],
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = done.stdout.splitlines()
    assert json.loads(line)["notebook"] == "a.ipynb" and json.loads(line)["ok"]


CHECKS_DATA = f"""import json
import subprocess
import sys
from pathlib import Path
manifest = json.loads((Path.home() / "datasets" / "datasets.json").read_text())
[tour] = [d for d in manifest["datasets"] if d["pid"] == "{TOUR}"]
assert (Path.home() / tour["path"] / "nexus_tour_0001.nxs").is_file()
assert Path.cwd() == Path.home() / "courses" / "broken", Path.cwd()"""


@pytest.mark.docker
def test_course_check_runs_notebooks_in_the_image_and_names_the_failing_cell(
    tmp_path, capsys
) -> None:
    """Two notebooks in order: the first passes (datasets and datasets.json are where a
    portal server has them), the second fails at its third cell."""
    ensure_images("base")
    folder = make_course(
        tmp_path / "broken",
        {
            "first.ipynb": notebook(("a", CHECKS_DATA)),
            "second.ipynb": notebook(("a", "x = 0"), ("b", "y = 1"), ("c", "y / x"), ("d", "ok")),
        },
        datasets=[TOUR],
    )
    assert main(["course", "check", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "  first.ipynb: ok (" in out
    assert "  second.ipynb: cell 3 failed (" in out
    assert "): ZeroDivisionError: division by zero\n    | y / x\n" in out
    leftovers = engine().containers.list(all=True, filters={"label": f"{CHECK_LABEL}=broken"})
    assert not leftovers, "course check removes its containers"


@pytest.mark.docker
def test_course_check_names_a_dataset_the_data_has_not(tmp_path, capsys) -> None:
    ensure_images("base")
    folder = make_course(
        tmp_path / "c", {"a.ipynb": notebook()}, datasets=["XX0000/ID00/missing_0001"]
    )
    assert main(["course", "check", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{folder / 'course.yaml'}: datasets: 'XX0000/ID00/missing_0001' is not in" in err


@pytest.mark.docker
def test_course_check_names_a_missing_image(tmp_path, monkeypatch, capsys) -> None:
    ghost = Environment("ghost", "panosc/ghost:0.0.0", None, "x", (), ("lab",), 1.0, "1G")
    for module in ("spawner.course_format", "portal.course_check"):
        monkeypatch.setattr(f"{module}.load_environments", lambda: {"ghost": ghost})
    folder = make_course(tmp_path / "c", {"a.ipynb": notebook()}, environment="ghost")
    assert main(["course", "check", str(folder)]) == 1
    assert (
        f"{folder / 'course.yaml'}: environment 'ghost' needs the image panosc/ghost:0.0.0,"
        " which is not on this Docker host; build it with: panosc-portal images build ghost"
    ) in capsys.readouterr().err


# -- courses: in portal.yaml ------------------------------------------------------------------

BASE = "auth: {issuer: https://login.example.eu, client_id: p}\n" + (
    "catalogue: {backend: local, local: {data_root: /data}}\n"
)


def test_portal_yaml_lists_courses_from_folders_and_git(tmp_path: Path) -> None:
    text = BASE + (
        "courses:\n"
        "  trainer_groups: [trainers]\n"
        "  sources:\n"
        "    nexus-basics: notebooks/nexus-basics\n"
        "    xrf: {git: https://git.example.eu/courses.git, ref: main, subdir: xrf}\n"
    )
    config = render.render_config(settings.parse(text, base_dir=tmp_path))
    assert config["CourseLibrary"] == {
        "courses": {
            "nexus-basics": {"folder": str(tmp_path / "notebooks/nexus-basics")},
            "xrf": {"git": "https://git.example.eu/courses.git", "ref": "main", "subdir": "xrf"},
        },
        "trainer_groups": ["trainers"],
        "checkout_dir": str(tmp_path / "state" / "courses"),
        "update_interval": 60.0,
    }
    handlers = dict(config["JupyterHub"]["extra_handlers"])
    assert handlers["/course/([a-z0-9-]+)"] == "portal.handlers.CourseHandler"


@pytest.mark.parametrize(
    ("courses", "message"),
    [
        ("{Bad_Name: /x}", "portal.yaml:5: courses.sources: course name 'Bad_Name': use lower"),
        ("{x: {git: u, reff: m}}", "portal.yaml:5: courses.sources.x: unknown key 'reff'; valid"),
        ("{x: {folder: /a, git: b}}", "courses.sources.x: give a folder (a path) or a git"),
        ("{x: {folder: /a, ref: b}}", "courses.sources.x: ref and subdir go with git"),
        ("{x: {git: u, subdir: ../y}}", "subdir '../y' must be a relative path in the repo"),
    ],
)
def test_portal_yaml_course_mistakes_are_named(courses: str, message: str) -> None:
    with pytest.raises(settings.SettingsError) as raised:
        settings.parse(BASE + f"courses:\n  trainer_groups: []\n  sources: {courses}\n")
    assert any(message in p for p in raised.value.problems), raised.value.problems
