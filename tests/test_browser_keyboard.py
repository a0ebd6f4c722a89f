"""In the browser, by keyboard alone: choose a dataset on the spawn form and start the server.

Signing in by keyboard is tested with the landing page (tests/test_browser_landing.py) and
choosing an environment card with the cards (tests/test_browser_envcards.py); here bob,
signed in, tabs to the dataset filter, types, ticks the one match with Space and starts
with Enter, and lands in JupyterLab in that dataset's folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from portal.demo.sampledata import DEMO_USERS
from tests.support.accessibility import assert_accessible
from tests.support.browser import sign_in
from tests.support.portal_client import PortalClient

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SERVER = "keyboard"


def tab_to(page: Page, selector: str, limit: int = 60) -> None:
    """Press Tab until the element matching ``selector`` has the focus, as a person would."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{selector} is not reachable with Tab within {limit} presses")


def test_choose_a_dataset_and_start_by_keyboard(browser: Browser, demo, artifacts: Path) -> None:
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(60_000)
    sign_in(page, demo.url, demo.issuer, DEMO_USERS["bob"]["sub"], f"/hub/spawn/bob/{SERVER}")
    assert_accessible(page)

    tab_to(page, "#panosc-filter")
    page.keyboard.type("ceo2")
    tab_to(page, ".panosc-dataset input")  # the first match: the others are filtered out
    page.keyboard.press("Space")
    expect(page.locator(".panosc-dataset input:checked")).to_have_count(1)
    expect(page.locator("#panosc-environment input:checked")).to_have_value("diffraction")
    tab_to(page, "button[type=submit], input[type=submit]")
    page.screenshot(path=artifacts / "spawn-form-by-keyboard.png", full_page=True)
    page.keyboard.press("Enter")

    where = f"**/user/bob/{SERVER}/lab/tree/datasets/ES1001/ceo2_powder_0001**"
    page.wait_for_url(where, timeout=120_000)
    expect(page.locator(".jp-DirListing-item", has_text="ceo2_powder_0001.nxs")).to_be_visible(
        timeout=120_000
    )
    page.close()
    bob = PortalClient(demo.url)
    bob.login(DEMO_USERS["bob"]["sub"])
    bob.stop(SERVER)
