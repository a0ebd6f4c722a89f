"""Every course shipped in notebooks/ opens from its link, in Chromium, on the Docker backend.

For each folder with a course.yaml, a student who may read its datasets opens
``/hub/course/<name>``, signs in, starts the course and lands in its first notebook, in the
course's environment with its datasets mounted under ``~/datasets``. The tomography course's
name is too long for a JupyterHub server name as it is: its link answered 400 until the
server names were shortened (tests/test_server_names.py checks the naming itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyterhub.slugs import is_valid_safe_slug
from playwright.sync_api import Browser, expect

from portal.demo.run import demo_courses
from portal.demo.sampledata import DEMO_USERS, generate
from spawner.course_format import SERVER_PREFIX, Course, load_course, server_name
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, portal_containers
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.browser]

COURSES = demo_courses("docker")  # name -> folder: every course in notebooks/
STUDENTS = ("alice", "bob")  # between them, members of every proposal the courses use


def student_for(course: Course) -> str:
    """A demo user who may read every dataset of ``course``: a member of each one's proposal."""
    for user in STUDENTS:
        if all(pid.split("/")[0] in DEMO_USERS[user]["proposals"] for pid in course.datasets):
            return user
    raise AssertionError(f"no demo user is a member of every proposal of {course.datasets}")


def first_heading(course: Course) -> str:
    """The title of the course's first notebook: the first heading of its first cell."""
    notebook = json.loads((course.folder / course.notebooks[0]).read_text(encoding="utf-8"))
    source = notebook["cells"][0]["source"]
    lines = ("".join(source) if isinstance(source, list) else source).splitlines()
    return next(line.lstrip("#").strip() for line in lines if line.startswith("#"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A Docker hub publishing every shipped course, as ``demo --spawner docker`` does."""
    images = sorted({load_course(Path(f)).environment for f in COURSES.values()})
    folder = tmp_path_factory.mktemp("shipped-courses")
    generate(folder / "data")
    provider = demo_provider(folder, *STUDENTS)
    courses = {"sources": COURSES}
    try:
        with docker_hub(
            provider, folder, folder / "data", images=images, users=STUDENTS, courses=courses
        ) as h:
            yield h
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def students(hub: Hub) -> dict[str, PortalClient]:
    """Each student's own session with the hub's API, to look around and clean up."""
    clients = {}
    for user in STUDENTS:
        clients[user] = PortalClient(hub.url)
        clients[user].login(DEMO_USERS[user]["sub"])
    return clients


def in_container(box, command: list[str]) -> str:
    code, out = box.exec_run(command, user="jovyan")
    assert code == 0, out.decode(errors="replace")
    return out.decode()


@pytest.mark.parametrize("name", sorted(COURSES))
def test_a_shipped_course_link_opens_its_first_notebook_with_its_datasets(
    name: str, browser: Browser, hub: Hub, students: dict[str, PortalClient], artifacts: Path
) -> None:
    course = load_course(Path(COURSES[name]))
    user, server = student_for(course), server_name(name)
    assert is_valid_safe_slug(server), server
    first = course.notebooks[0]

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/course/{name}")
    page.get_by_text("Sign in with Umbrella").click()
    page.fill("input[name=sub]", DEMO_USERS[user]["sub"])
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_role("heading", name=f"Start the course “{name}”")).to_be_visible()
    page.get_by_role("button", name="Start the course").click()
    page.wait_for_url(f"**/user/{user}/{server}/lab/tree/courses/{name}/{first}", timeout=180_000)
    heading = page.locator(".jp-RenderedMarkdown h1", has_text=first_heading(course)).first
    expect(heading).to_be_visible(timeout=120_000)  # the first notebook is open
    page.wait_for_timeout(1000)
    page.screenshot(path=artifacts / f"shipped-course-{name}.png")
    page.close()

    [box] = [
        c
        for c in portal_containers(engine(), user)
        if c.labels["org.panosc.portal.server"] == server
    ]
    assert box.labels["org.panosc.portal.environment"] == course.environment
    assert sorted(json.loads(box.labels["org.panosc.portal.datasets"])) == sorted(course.datasets)
    manifest = json.loads(in_container(box, ["cat", "/home/jovyan/datasets/datasets.json"]))
    assert sorted(d["pid"] for d in manifest["datasets"]) == sorted(course.datasets)
    for entry in manifest["datasets"]:
        listing = in_container(box, ["ls", f"/home/jovyan/{entry['path']}"]).split()
        assert any(f.endswith(".nxs") for f in listing), (entry["pid"], listing)

    client = students[user]
    home = client.http.get(f"{hub.url}/hub/home", timeout=30)
    assert f"<td>{SERVER_PREFIX}{name}</td>" in home.text, "the home page names the course"
    client.stop(server)  # one course server at a time on the test machine
