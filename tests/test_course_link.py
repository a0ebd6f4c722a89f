"""The course link end to end: a real OIDC provider, a hub from portal.yaml with the Docker
backend, a course kept in a git repository (a local file:// URL: no network).

A student opens /hub/course/intro in Chromium and lands in its first notebook, edits it, the
trainer pushes an update, and the student opens the link again: the edit survives and the
update arrives, on the running server and again at the next start. The trainer sees who
started the course; a student does not.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from portal.demo.sampledata import DEMO_USERS, generate
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, ensure_images, portal_containers
from tests.support.notebooks import notebook
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

TOUR = "MA1234/ID21/nexus_tour_0001"  # open data: every student may read it
TOMO = "IH2002/ID19/phantom_tomo_0001"  # embargoed; alice is not a member
USERS = ("alice", "carol")
LAB = "/user/alice/course-intro/lab/tree/courses/intro/intro.ipynb"
CONTENTS = "user/alice/course-intro/api/contents/courses/intro"

FIRST_CELL = f"""import json
from pathlib import Path
manifest = json.loads((Path.home() / "datasets" / "datasets.json").read_text())
[tour] = [d for d in manifest["datasets"] if d["pid"] == "{TOUR}"]"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=Carol", "-c", "user.email=carol@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def publish(repo: Path, notebooks: dict[str, bytes], message: str) -> None:
    """The trainer commits the course: course.yaml lists ``notebooks`` in order."""
    course = {
        "title": "Introduction",
        "description": "A first look at a NeXus file.",
        "environment": "base",
        "notebooks": list(notebooks),
        "datasets": [TOUR],
    }
    (repo / "course.yaml").write_text(json.dumps(course))
    for name, data in notebooks.items():
        (repo / name).write_bytes(data)
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("courses") / "intro.git"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch", "main")
    publish(repo, {"intro.ipynb": notebook(("a", FIRST_CELL), ("b", "x = 1"), ("c", "x"))}, "v1")
    return repo


@pytest.fixture(scope="module")
def hub(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    ensure_images("base")
    data = tmp_path_factory.mktemp("facility") / "data"
    generate(data)
    embargoed = tmp_path_factory.mktemp("embargoed")
    (embargoed / "course.yaml").write_text(
        json.dumps(
            {
                "title": "Bone tomography",
                "description": "Needs an embargoed dataset.",
                "environment": "base",
                "notebooks": ["t.ipynb"],
                "datasets": [TOMO],
            }
        )
    )
    (embargoed / "t.ipynb").write_bytes(notebook(("a", "1")))
    provider = demo_provider(tmp_path_factory.mktemp("op"), *USERS)
    courses = {
        "trainer_groups": ["trainers"],
        "update_interval": 0,
        "sources": {"intro": {"git": f"file://{repo}"}, "bones": str(embargoed)},
    }
    folder = tmp_path_factory.mktemp("hub")
    try:
        with docker_hub(provider, folder, data, images=["base"], users=USERS, courses=courses) as h:
            yield h
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(DEMO_USERS["alice"]["sub"])
    return client


def read_cells(client: PortalClient, name: str) -> list[tuple[str, str]]:
    r = client.api("GET", f"{CONTENTS}/{name}")
    assert r.status_code == 200, r.text
    return [(c["id"], c["source"]) for c in r.json()["content"]["cells"]]


@pytest.mark.browser
def test_one_click_starts_the_course_and_opens_its_first_notebook(
    browser: Browser, hub: Hub, alice: PortalClient, artifacts: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/course/intro")
    page.get_by_text("Sign in with Umbrella").click()
    page.fill("input[name=sub]", DEMO_USERS["alice"]["sub"])
    page.get_by_role("button", name="Authorize").click()
    # Back from the identity provider (another origin), the portal asks before starting.
    expect(page.get_by_role("heading", name="Start the course “intro”")).to_be_visible()
    page.screenshot(path=artifacts / "course-link-confirm.png")
    page.get_by_role("button", name="Start the course").click()
    page.wait_for_url(f"**{LAB}", timeout=120_000)
    expect(page.get_by_text("x = 1")).to_be_visible(timeout=120_000)  # the notebook is open
    page.wait_for_timeout(1000)
    page.screenshot(path=artifacts / "course-link-notebook.png")
    page.close()

    [box] = [
        c
        for c in portal_containers(engine(), "alice")
        if c.labels["org.panosc.portal.server"] == "course-intro"
    ]
    assert box.labels["org.panosc.portal.environment"] == "base"
    assert json.loads(box.labels["org.panosc.portal.datasets"]) == [TOUR]
    listing = alice.api("GET", CONTENTS).json()["content"]
    assert sorted(item["name"] for item in listing) == ["intro.ipynb"], "course.yaml stays out"


def test_a_students_edit_survives_the_trainers_update(hub: Hub, alice, repo: Path) -> None:
    # alice runs cell a, edits cell b and adds a cell of her own; JupyterLab saves.
    model = alice.api("GET", f"{CONTENTS}/intro.ipynb").json()
    cells = model["content"]["cells"]
    cells[1]["source"] = "x = 42  # alice's"
    cells.append({**cells[2], "id": "mine", "source": "print('my own cell')"})
    saved = alice.api("PUT", f"{CONTENTS}/intro.ipynb", json={"type": "notebook", **model})
    assert saved.status_code == 200, saved.text

    # Carol changes cell c, adds cell d and a second notebook, and commits.
    v2 = notebook(("a", FIRST_CELL), ("b", "x = 1"), ("c", "print(x)"), ("d", "x * 2"))
    publish(repo, {"intro.ipynb": v2, "part2.ipynb": notebook(("p", "part 2"))}, "v2")

    # alice opens the link again: her running server receives the update.
    opened = alice.click("/hub/course/intro", timeout=60)
    assert opened.status_code == 200 and opened.url.endswith(LAB), opened.url
    assert read_cells(alice, "intro.ipynb") == [
        ("a", FIRST_CELL),
        ("b", "x = 42  # alice's"),  # her edit
        ("c", "print(x)"),  # carol's change to a cell alice left alone
        ("d", "x * 2"),  # carol's new cell, right after the cell it follows
        ("mine", "print('my own cell')"),  # alice's own cell
    ]
    assert read_cells(alice, "part2.ipynb") == [("p", "part 2")]

    # The next update arrives when the server starts again.
    stop_keeping(alice, "course-intro")
    v3 = notebook(("a", FIRST_CELL), ("b", "x = 1"), ("c", "print('x is', x)"), ("d", "x * 2"))
    publish(repo, {"intro.ipynb": v3, "part2.ipynb": notebook(("p", "part 2"))}, "v3")
    started = alice.click("/hub/course/intro", timeout=60)
    assert started.status_code == 200 and "/hub/spawn-pending/alice/course-intro" in started.url
    alice.wait_ready("course-intro")
    cells = dict(read_cells(alice, "intro.ipynb"))
    assert (cells["b"], cells["c"], cells["mine"]) == (
        "x = 42  # alice's",
        "print('x is', x)",
        "print('my own cell')",
    )


def stop_keeping(client: PortalClient, server: str) -> None:
    """Stop a named server but keep it, as the home page's Stop button does."""
    r = client.api("DELETE", f"hub/api/users/{client.username()}/servers/{server}")
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while server in client.api("GET", f"hub/api/users/{client.username()}").json()["servers"]:
        assert time.monotonic() < deadline, f"server {server!r} did not stop"
        time.sleep(0.5)


def test_trainers_see_who_started_a_course_and_students_do_not(hub: Hub, alice) -> None:
    carol = PortalClient(hub.url)
    carol.login(DEMO_USERS["carol"]["sub"])
    page = carol.http.get(f"{hub.url}/hub/course/intro/students", timeout=30)
    assert page.status_code == 200
    assert '<tr data-user="alice">' in page.text and "1 student(s)" in page.text
    denied = alice.http.get(f"{hub.url}/hub/course/intro/students", timeout=30)
    assert denied.status_code == 403 and "Only trainers see who started a course" in denied.text


def test_a_course_with_a_dataset_the_student_may_not_read_is_refused(hub: Hub, alice) -> None:
    r = alice.click("/hub/course/bones", timeout=30)
    assert r.status_code == 403
    assert f"uses the dataset {TOMO}, which you may not read" in r.text
    assert alice.click("/hub/course/nope", timeout=30).status_code == 404


def test_a_booby_trapped_server_cannot_hang_or_hijack_course_delivery(hub: Hub, alice) -> None:
    """alice replaces the virtualenv's Python with a program that never ends, shadows the
    standard library from her home and puts a pipe where the delivery reads its merge base.
    Opening the course link again still delivers, promptly; the hub stays responsive."""
    [box] = [
        c
        for c in portal_containers(engine(), "alice")
        if c.labels["org.panosc.portal.server"] == "course-intro" and c.status == "running"
    ]
    trap = (
        "printf '#!/bin/sh\\nsleep 1000\\n' > /opt/venv/bin/python3.11.trap"
        " && chmod +x /opt/venv/bin/python3.11.trap"
        " && mv -f /opt/venv/bin/python3.11.trap /opt/venv/bin/python3"
        " && echo 'import time; time.sleep(1000)' > ~/argparse.py && cp ~/argparse.py ~/json.py"
        " && rm ~/courses/intro/.course/intro.ipynb && mkfifo ~/courses/intro/.course/intro.ipynb"
    )
    code, out = box.exec_run(["sh", "-c", trap], user="1000:100")
    assert code == 0, out
    started = time.monotonic()
    opened = alice.click("/hub/course/intro", timeout=60)
    assert opened.status_code == 200 and opened.url.endswith(LAB), opened.text[-500:]
    assert time.monotonic() - started < 30
    assert [c for c, _ in read_cells(alice, "intro.ipynb")][:2] == ["a", "b"]


def test_a_command_in_a_user_container_is_bounded_in_time(hub: Hub, alice) -> None:
    from spawner.docker import exec_bounded

    [box] = [
        c
        for c in portal_containers(engine(), "alice")
        if c.labels["org.panosc.portal.server"] == "course-intro" and c.status == "running"
    ]
    api = engine().api
    started = time.monotonic()
    code, _, err = exec_bounded(api, box.id, ["/bin/sleep", "60"], "1000:100", 3)
    assert code != 0 and b"did not finish within 3 s" in err
    assert time.monotonic() - started < 15
    code, out, _ = exec_bounded(
        api, box.id, ["/bin/sh", "-c", "yes | head -c 3000000"], "1000:100", 30
    )
    assert code != 0 and len(out) == 1 << 20  # the output cap
