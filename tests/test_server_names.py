"""Server names: every course link and every "open in portal" link names a server JupyterHub takes.

JupyterHub 6 answers 400 to a named server that is not a safe slug
(``jupyterhub.slugs.is_valid_safe_slug``); before the fix ``/hub/course/tomography-reconstruction``
did. These properties are checked against JupyterHub's own rule, over random course names and
pids; the servers are traced back to their course through the configured courses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jupyterhub import orm
from jupyterhub.slugs import is_valid_safe_slug
from jupyterhub.user import User
from traitlets import TraitError
from traitlets.config import Config

from portal import settings
from portal.catalogue import Dataset
from portal.cli import main
from portal.demo.run import demo_courses
from portal.handlers import server_name_for
from spawner.course_format import NAME, SERVER_PREFIX, server_name, server_names
from spawner.course_library import CourseLibrary, course_of_server
from spawner.environments import SERVER_TYPES
from spawner.local import PortalLocalSpawner
from tests.support.notebooks import notebook

#: Every name ``portal.yaml`` and ``CourseLibrary`` accept for a course.
COURSE_NAMES = st.from_regex(NAME, fullmatch=True)
SHIPPED = sorted(demo_courses("docker"))  # the courses in notebooks/
LONG = "tomography-reconstruction"
LONG_SERVER = "course-tomography-rec-88075728"


@pytest.fixture(autouse=True, scope="module")
def no_library_left_behind() -> Iterator[None]:
    """The tests here configure the hub's course library; other modules start without one."""
    yield
    CourseLibrary.clear_instance()


def configure(*courses: str) -> None:
    """The hub's library lists ``courses``, as portal.yaml's courses.sources would."""
    CourseLibrary.clear_instance()
    CourseLibrary.instance(courses={c: {"folder": f"/srv/courses/{c}"} for c in courses})


def dataset(pid: str) -> Dataset:
    return Dataset(pid=pid, title="t", proposal="P1", instrument="I1", location="/data/x")


# -- course servers ---------------------------------------------------------------------------


@given(st.one_of(COURSE_NAMES, st.text(min_size=1)))
def test_every_course_name_makes_a_server_name_jupyterhub_takes(course: str) -> None:
    name = server_name(course)
    assert is_valid_safe_slug(name), name
    assert name.startswith(SERVER_PREFIX)


@given(COURSE_NAMES)
def test_a_name_jupyterhub_takes_as_it_is_stays_readable(course: str) -> None:
    if is_valid_safe_slug(SERVER_PREFIX + course):
        assert server_name(course) == SERVER_PREFIX + course


def test_short_names_are_kept_and_long_or_unsafe_ones_shortened_with_a_hash() -> None:
    assert server_name("intro") == "course-intro"
    assert server_name("xrf-mapping") == "course-xrf-mapping"
    assert server_name("azimuthal-integration") == "course-azimuthal-integration"
    assert server_name(LONG) == LONG_SERVER  # pinned: a new name would orphan students' servers
    assert server_name("x--ray") == "course-x-ray-595b74a0"
    assert server_name("x--ray") != server_name("x-ray") == "course-x-ray"
    assert server_name("2d-maps") == "course-2d-maps"


def test_server_names_are_the_same_in_every_process() -> None:
    """Not Python's per-process hash(): a hub restart must find the students' servers again."""
    code = f"from spawner.course_format import server_name; print(server_name({LONG!r}))"
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        assert done.stdout.strip() == LONG_SERVER


@given(st.lists(COURSE_NAMES, unique=True, max_size=40))
def test_distinct_courses_never_share_a_server(courses: list[str]) -> None:
    assert len(server_names(courses)) == len(courses)


def test_the_shipped_courses_all_get_servers_jupyterhub_takes() -> None:
    assert "tomography-reconstruction" in SHIPPED
    names = server_names(SHIPPED)
    assert len(names) == len(SHIPPED)
    assert all(is_valid_safe_slug(server) for server in names)


# -- back from a server to its course ---------------------------------------------------------


@given(st.lists(COURSE_NAMES, unique=True, min_size=1, max_size=20))
def test_each_configured_courses_server_leads_back_to_it(courses: list[str]) -> None:
    configure(*courses)
    for course in courses:
        assert course_of_server(server_name(course)) == course


def test_other_servers_belong_to_no_course() -> None:
    configure(LONG, "intro")
    assert course_of_server("lab-xrf-map-0001") is None
    assert course_of_server("") is None
    assert course_of_server("course-xrf-mapping") is None, "not a course of this hub"
    assert course_of_server("course-tomography-reconstruction") is None, "not its server"
    configure("intro")
    assert course_of_server(LONG_SERVER) is None, "a course no longer listed"


def test_two_courses_that_would_share_a_server_are_refused_naming_both() -> None:
    clash = {LONG: {"folder": "/a"}, "tomography-rec-88075728": {"folder": "/b"}}
    with pytest.raises(TraitError, match=f"'{LONG}' and 'tomography-rec-88075728' would both run"):
        CourseLibrary(courses=clash)


async def test_the_local_spawner_delivers_a_course_with_a_shortened_server_name(
    tmp_path: Path,
) -> None:
    """What the hub does at a start: the spawner, created from the hub's config, finds the
    course of ``course-tomography-rec-88075728`` and delivers it into ~/courses/<course>/."""
    folder = tmp_path / "course"
    folder.mkdir()
    (folder / "course.yaml").write_text("title: t\n")
    (folder / "recon.ipynb").write_bytes(notebook(("a", "1")))
    config = Config()
    config.CourseLibrary.courses = {LONG: {"folder": str(folder)}}
    config.PortalLocalSpawner.home_dir_template = str(tmp_path / "homes/{username}")
    CourseLibrary.clear_instance()  # a new hub: its spawners configure the library
    db = orm.new_session_factory("sqlite://")()
    db.add(orm.User(name="alice"))
    db.commit()
    alice = User(
        db.query(orm.User).one(),
        settings={"spawner_class": PortalLocalSpawner, "config": config},
    )
    spawner = alice.get_or_create_spawner(server_name(LONG), LONG)
    spawner._events = []  # what a start's prepare_spawn() sets up for progress messages
    await spawner.sync_course()
    delivered = tmp_path / "homes/alice/courses" / LONG / "recon.ipynb"
    assert delivered.read_bytes() == notebook(("a", "1"))


# -- portal.yaml ------------------------------------------------------------------------------

PORTAL_YAML = """\
auth: {{issuer: https://login.example.eu, client_id: p}}
catalogue: {{backend: local, local: {{data_root: /data}}}}
courses:
  sources:
{sources}
"""


def portal_yaml(tmp_path: Path, *courses: str) -> Path:
    sources = "\n".join(f"    {c}: /srv/courses/{c}" for c in courses)
    path = tmp_path / "portal.yaml"
    path.write_text(PORTAL_YAML.format(sources=sources))
    return path


def test_config_check_accepts_every_course_name_since_every_one_works(tmp_path, capsys) -> None:
    forty = "a-very-long-course-name-for-beginners-01"
    assert len(forty) == 40
    path = portal_yaml(tmp_path, LONG, forty, "x--ray", "2d-maps")
    assert main(["config", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_config_check_refuses_two_courses_that_would_share_a_server(tmp_path) -> None:
    path = portal_yaml(tmp_path, LONG, "tomography-rec-88075728")
    with pytest.raises(settings.SettingsError) as raised:
        settings.load(path)
    assert (
        f"courses '{LONG}' and 'tomography-rec-88075728' would both run in the server"
        f" '{LONG_SERVER}'; rename one of them"
    ) in str(raised.value)


# -- /hub/open's dataset servers --------------------------------------------------------------


@given(st.text(), st.sampled_from(SERVER_TYPES), st.sets(st.text(max_size=40), max_size=5))
def test_every_pid_makes_a_server_name_jupyterhub_takes(
    pid: str, server_type: str, taken: set[str]
) -> None:
    name = server_name_for(dataset(pid), server_type, taken)
    assert is_valid_safe_slug(name), name
    assert name.startswith(server_type), name
    assert not name.startswith(SERVER_PREFIX), "never a course's server"


@given(st.text(), st.sampled_from(SERVER_TYPES))
def test_a_dataset_server_name_in_use_gets_a_distinct_valid_one(pid: str, server_type: str) -> None:
    first = server_name_for(dataset(pid), server_type, set())
    second = server_name_for(dataset(pid), server_type, {first})
    assert second != first
    assert is_valid_safe_slug(second), second
    assert server_name_for(dataset(pid), server_type, set()) == first, "stable"
