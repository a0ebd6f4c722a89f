"""In the browser: the home page's one sessions table, kept current in place, and the spawn
page's progress steps in words.

On the demo (local backend, real OIDC provider, real hub and Chromium). The user is dave, whom
no other browser test starts servers for, so "exactly one row" means what it says.
"""

from __future__ import annotations

import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from portal.demo.sampledata import DEMO_USERS
from portal.handlers import new_server_name
from spawner.environments import load_environments
from spawner.form import form_context, render_form
from tests.support.accessibility import assert_accessible
from tests.support.browser import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER = "dave"
SAXS = "OD2019/ID02/agbh_saxs_0001"  # open data: every demo user may read it
MARKER = "window.__stillTheSamePage"


@pytest.fixture(scope="module")
def context(browser: Browser, demo) -> BrowserContext:
    """dave, signed in through the provider's page, in a context of his own."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 800})
    ctx.set_default_timeout(60_000)
    page = ctx.new_page()
    sign_in(page, demo.url, demo.issuer, DEMO_USERS[USER]["sub"], "/hub/home")
    page.close()
    yield ctx
    ctx.close()


def api(page: Page, method: str, path: str, body: dict | None = None) -> int:
    """A call to the hub's REST API from the page, as the page's own script makes it."""
    return page.evaluate(
        """async ([method, path, body]) => (await fetch(jhdata.base_url + "api/" + path, {
            method, headers: {"X-XSRFToken": jhdata.xsrf_token, "Content-Type": "application/json"},
            body: body === null ? undefined : JSON.stringify(body)})).status""",
        [method, path, body],
    )


def servers(page: Page) -> dict:
    """The user's active servers, as the hub's REST API tells the page."""
    return page.evaluate(
        """async () => (await (await fetch(`${jhdata.base_url}api/users/${jhdata.user}`,
            {headers: {"X-XSRFToken": jhdata.xsrf_token}})).json()).servers"""
    )


def test_home_is_one_sessions_table_updated_in_place(
    context: BrowserContext, demo, artifacts: Path
) -> None:
    home = context.new_page()
    home.goto(f"{demo.url}/hub/home")
    # No stock JupyterHub server UI: no "My Server" buttons, no named-server table or name box.
    expect(home.get_by_text("Named Servers")).to_have_count(0)
    expect(home.get_by_text("My Server")).to_have_count(0)
    for stock in ("#start", "#stop", ".server-table", ".home-server-row", ".new-server-name"):
        expect(home.locator(stock)).to_have_count(0)
    expect(home.locator("table")).to_have_count(1)
    expect(home.locator(".portal-none")).to_contain_text("No session is running")
    expect(home.get_by_role("link", name="New JupyterLab")).to_be_visible()
    expect(home.get_by_role("link", name="Browse datasets")).to_be_visible()
    expect(home.get_by_role("link", name="New desktop")).to_have_count(0)  # not on this backend
    home.screenshot(path=artifacts / "home-no-session.png", full_page=True)
    assert_accessible(home)
    home.evaluate(f"{MARKER} = true")

    # "New JupyterLab", opened in a second tab as a researcher may: the spawn form of a new
    # named server. Started there, the session appears in the home tab, without a reload.
    href = home.get_by_role("link", name="New JupyterLab").get_attribute("href")
    lab = context.new_page()
    lab.goto(demo.url + href)
    lab.wait_for_url(f"**/hub/spawn/{USER}/lab-1")
    lab.fill("#panosc-filter", "saxs")
    lab.locator(".panosc-dataset:visible input").first.check()
    lab.get_by_role("button", name="Start").click()
    lab.wait_for_url(f"**/user/{USER}/lab-1/**", timeout=120_000)

    home.bring_to_front()
    rows = home.locator("tr.portal-session")
    expect(rows).to_have_count(1, timeout=30_000)
    row = rows.first
    expect(row).to_have_attribute("data-server-name", "lab-1")
    expect(row.locator(".portal-status")).to_have_text("Running")
    expect(row).to_contain_text("JupyterLab")
    expect(row).to_contain_text(SAXS)
    expect(row.locator(".portal-remaining")).not_to_have_text("")
    expect(row.get_by_role("link", name="Open lab-1")).to_have_attribute(
        "href", f"/user/{USER}/lab-1/"
    )
    expect(home.locator(".portal-none")).to_have_count(0)
    assert home.evaluate(MARKER), "the home page was reloaded"
    home.screenshot(path=artifacts / "home-one-session.png", full_page=True)
    assert_accessible(home)

    # Stop from the home page: "Stopping…", then the row goes, in place.
    row.get_by_role("button", name="Stop lab-1").click()
    expect(row.locator(".portal-status")).to_have_text("Stopping…")
    expect(rows).to_have_count(0, timeout=60_000)
    expect(home.locator(".portal-none")).to_be_visible()
    expect(home.locator("#portal-notice")).to_contain_text("lab-1 has stopped")
    assert home.evaluate(MARKER), "the home page was reloaded"
    assert "lab-1" not in servers(home), "the hub still has the server after Stop"
    lab.close()
    home.close()


def test_spawn_page_lists_each_progress_step(
    context: BrowserContext, demo, artifacts: Path
) -> None:
    home = context.new_page()
    home.goto(f"{demo.url}/hub/home")
    page = context.new_page()
    pending = f"{demo.url}/hub/spawn-pending/{USER}/steps"
    loads: list[str] = []

    def hold_the_page(route: Route) -> None:
        """The page reloads once the server is ready, to go to it; answer that reload with
        204 No Content, which keeps the page as the user saw it, to look at it."""
        loads.append(route.request.url)
        if len(loads) == 1:
            route.continue_()
        else:
            route.fulfill(status=204)

    page.route(f"{pending}*", hold_the_page)
    # Start through the REST API, as the pages' own buttons do, and watch it start.
    home.evaluate(
        """([user, pid]) => { fetch(`${jhdata.base_url}api/users/${user}/servers/steps`, {
            method: "POST", body: JSON.stringify({type: "lab", datasets: [pid]}),
            headers: {"X-XSRFToken": jhdata.xsrf_token, "Content-Type": "application/json"}}) }""",
        [USER, SAXS],
    )
    deadline = time.monotonic() + 30
    while "steps" not in servers(home):  # the hub has taken the request
        assert time.monotonic() < deadline, "the start was not taken"
        home.wait_for_timeout(100)
    page.goto(pending)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Starting JupyterLab")
    steps = page.get_by_role("list", name="Steps").get_by_role("listitem")
    expect(steps.last).to_contain_text("Server ready", timeout=120_000)
    # Every step the hub and the local spawner announce, in order, each once.
    expect(steps).to_have_text(
        [
            "Server requested",
            "Checking access to 1 dataset(s)",
            "Mounting 1 dataset(s) read-only",
            "Starting JupyterLab in your sandbox",
            f"Server ready at /user/{USER}/steps/",
        ]
    )
    expect(page.locator("#progress-bar")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator(".portal-current")).to_have_count(0)  # nothing under way any more
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()  # nothing to cancel
    assert len(loads) == 2, loads  # the page, then its reload to the ready server
    page.wait_for_timeout(1000)  # the bar's width is animated: let it reach the end
    page.screenshot(path=artifacts / "spawn-pending-steps.png", full_page=True)
    assert_accessible(page)
    assert api(page, "DELETE", f"users/{USER}/servers/steps") in (202, 204)
    page.close()
    home.close()


def test_new_session_names_follow_the_portal_scheme() -> None:
    assert new_server_name("lab", set()) == "lab-1"
    assert new_server_name("lab", {"lab-1", "lab-2", "desktop-3"}) == "lab-3"
    assert new_server_name("desktop", {"lab-1"}) == "desktop-1"


def checked_types(form: str) -> list[str]:
    """The server types a rendered spawn form has checked."""

    checked: list[str] = []

    class Radios(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "input" and a.get("name") == "type" and "checked" in a:
                checked.append(a["value"] or "")

    Radios().feed(form)
    return checked


def test_new_desktop_opens_the_form_with_desktop_chosen() -> None:
    """On the Docker and Kubernetes backends "New desktop" names its server desktop-<n>; the
    form it opens must start a desktop, not a JupyterLab, unless the user changes it."""
    context = form_context([], load_environments(), ("lab", "desktop"), {})
    assert checked_types(render_form({**context, "chosen_type": "desktop"})) == ["desktop"]
    assert checked_types(render_form(context)) == ["lab"]
    local = form_context([], load_environments(), ("lab",), {})
    assert checked_types(render_form({**local, "chosen_type": "desktop"})) == []


def test_new_desktop_is_refused_where_there_is_none(context: BrowserContext, demo) -> None:
    """The local backend runs no desktop: the link is absent and typing it is a clear 400."""
    page = context.new_page()
    response = page.goto(f"{demo.url}/hub/open?type=desktop")
    assert response is not None and response.status == 400
    expect(page.locator("body")).to_contain_text("cannot open a 'desktop' server")
    page.close()
