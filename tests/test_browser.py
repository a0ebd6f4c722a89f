"""In the browser: sign in through the provider's page, reach JupyterLab, open NeXus in h5web.

Drives Debian's Chromium with Playwright (never a downloaded browser) and saves screenshots
in test-artifacts/ for people to look at.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from portal.demo.sampledata import DEMO_USERS

pytestmark = [pytest.mark.e2e, pytest.mark.browser]


def test_login_lab_and_h5web(browser: Browser, demo, artifacts: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(demo.url)
    expect(page.get_by_text("Sign in with Umbrella")).to_be_visible()
    page.screenshot(path=artifacts / "01-hub-login.png")
    page.get_by_text("Sign in with Umbrella").click()

    page.wait_for_url(f"{demo.issuer}/**")
    page.screenshot(path=artifacts / "02-umbrella-provider.png")
    page.locator(f"button[value='{DEMO_USERS['bob']['sub']}']").click()

    # The spawn form: bob filters his datasets, picks the CeO2 powder pattern and starts.
    page.wait_for_url("**/hub/spawn**")
    page.fill("#panosc-filter", "ceo2")
    rows = page.locator(".panosc-dataset:visible")
    expect(rows).to_have_count(1)
    rows.first.locator("input").check()
    expect(page.locator("#panosc-environment input:checked")).to_have_value("diffraction")
    page.screenshot(path=artifacts / "03-spawn-form.png", full_page=True)
    page.get_by_role("button", name="Start").click()

    # JupyterLab opens in the chosen dataset's folder.
    page.wait_for_url("**/user/bob/lab/tree/datasets/ES1001/ceo2_powder_0001**", timeout=120_000)
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    listing = page.locator(".jp-DirListing-item", has_text="ceo2_powder_0001.nxs")
    expect(listing).to_be_visible()
    expect(page.locator(".Toastify__toast")).to_have_count(0)  # no news or update prompt
    page.screenshot(path=artifacts / "04-jupyterlab.png")
    listing.dblclick()
    explorer = page.get_by_role("tree").first
    expect(explorer.get_by_text("entry", exact=True)).to_be_visible(timeout=60_000)
    expect(page.get_by_text("NX Heatmap")).to_be_visible()  # h5web follows the NeXus default
    expect(page.locator("canvas").first).to_be_visible()
    page.wait_for_timeout(2000)  # let the heatmap finish drawing
    page.screenshot(path=artifacts / "05-h5web-nexus.png")
