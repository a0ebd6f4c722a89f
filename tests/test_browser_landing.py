"""In the browser: the landing page a researcher sees first, and a JupyterLab without pop-ups.

The demo's ``branding:`` (portal/demo/run.py) must reach the page: its name, facility,
tagline, logo and links; the sign-in works from the keyboard alone; and the JupyterLab a local
server opens greets nobody with a news prompt or any other notification.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from portal.demo.run import DEMO_BRANDING
from portal.demo.sampledata import DEMO_USERS
from tests.support.accessibility import assert_accessible
from tests.support.portal_client import PortalClient

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SIGN_IN = "Sign in with Umbrella"


def new_page(browser: Browser) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.set_default_timeout(60_000)
    return page


def test_landing_page_says_what_the_portal_is(browser: Browser, demo, artifacts: Path) -> None:
    page = new_page(browser)
    page.goto(demo.url)
    page.wait_for_url("**/hub/login**")
    expect(page.get_by_role("heading", level=1)).to_have_text(DEMO_BRANDING["name"])
    expect(page.locator(".portal-facility")).to_have_text(DEMO_BRANDING["facility"])
    expect(page.locator(".portal-tagline")).to_contain_text("JupyterLab and remote desktops")
    expect(page).to_have_title(f"{DEMO_BRANDING['name']} · {DEMO_BRANDING['facility']}")
    links = page.get_by_role("navigation", name="Help and policies").get_by_role("link")
    expect(links).to_have_text([link["title"] for link in DEMO_BRANDING["links"]])
    for i, link in enumerate(DEMO_BRANDING["links"]):
        expect(links.nth(i)).to_have_attribute("href", link["url"])
    # The logo, served by the hub from the portal's own file, is drawn (not a broken image).
    for logo in (page.locator(".portal-landing-logo"), page.locator("#jupyterhub-logo img")):
        assert logo.evaluate("img => img.complete && img.naturalWidth > 0"), "logo not shown"
    assert (
        requests.get(f"{demo.url}/hub/logo", timeout=10)
        .headers["Content-Type"]
        .startswith("image/svg+xml")
    )
    expect(page.locator("#jupyterhub-logo")).to_contain_text(DEMO_BRANDING["name"])
    page.screenshot(path=artifacts / "landing-page.png", full_page=True)
    assert_accessible(page)
    # JupyterHub's dark theme, one click away in the navbar, must stay readable too.
    page.get_by_role("button", name="Toggle dark mode").click()
    expect(page.locator("html")).to_have_attribute("data-bs-theme", "dark")
    page.mouse.move(640, 700)  # off the toggle: the screenshot shows it as it rests
    page.screenshot(path=artifacts / "landing-page-dark.png", full_page=True)
    assert_accessible(page)


def test_keyboard_sign_in_and_lab_without_pop_ups(browser: Browser, demo, artifacts: Path) -> None:
    page = new_page(browser)
    page.goto(f"{demo.url}/hub/login")
    # Tab from the top of the page reaches the sign-in button within a few steps; Enter follows.
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == SIGN_IN:
            break
    else:
        pytest.fail(f"six Tab presses never reached {SIGN_IN!r}")
    page.screenshot(path=artifacts / "landing-sign-in-focused.png")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{demo.issuer}/**")
    page.locator(f"button[value='{DEMO_USERS['carol']['sub']}']").click()

    page.wait_for_url("**/hub/spawn**")
    expect(page.locator("#jupyterhub-logo")).to_contain_text(DEMO_BRANDING["name"])
    expect(page.get_by_role("navigation", name="About this portal")).to_contain_text(
        DEMO_BRANDING["links"][0]["title"]
    )
    page.screenshot(path=artifacts / "spawn-page-branded-navbar.png")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/user/carol/lab**", timeout=120_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    # JupyterLab asks about news a moment after it starts: give it time to, then look.
    page.wait_for_timeout(8000)
    page.screenshot(path=artifacts / "jupyterlab-no-pop-up.png")
    expect(page.get_by_text("Would you like to get notified")).to_have_count(0)
    expect(page.locator(".Toastify__toast")).to_have_count(0)
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    page.close()
    carol = PortalClient(demo.url)  # other tests count carol's servers: leave none running
    carol.login(DEMO_USERS["carol"]["sub"])
    carol.stop()
