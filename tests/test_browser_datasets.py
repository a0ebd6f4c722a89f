"""In the browser: a researcher finds a dataset by its thumbnail and title, reads its page,
and opens it in JupyterLab, landing in its folder.

On the demo (local backend, real OIDC provider, real hub and Chromium). The user is alice,
whom no other browser test starts servers for; the server started here is stopped at the
end. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from portal.demo.sampledata import DEMO_USERS
from tests.support.accessibility import assert_accessible
from tests.support.browser import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER = "alice"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
TITLE = "CeO2 powder diffraction at 0.4 Å, 2D detector at 150 mm"


def stop_server(page: Page, name: str) -> int:
    """Stop a named server through the hub's API, as the page's own scripts would."""
    return page.evaluate(
        """async (name) => (await fetch(
            `${jhdata.base_url}api/users/${jhdata.user}/servers/${name}`,
            {method: "DELETE", headers: {"X-XSRFToken": jhdata.xsrf_token}})).status""",
        name,
    )


def test_find_a_dataset_by_its_thumbnail_read_its_page_and_open_it(
    browser: Browser, demo, artifacts: Path
) -> None:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    sign_in(page, demo.url, demo.issuer, DEMO_USERS[USER]["sub"], "/hub/datasets")

    # The list: every row's picture has loaded, and the CeO2 pattern is found by its title.
    row = page.locator(f"tr[data-pid='{CEO2}']")
    thumb = row.locator("img.panosc-thumb")
    expect(thumb).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.panosc-thumb')].every(i => i.complete)"
    )
    assert thumb.evaluate("img => img.naturalWidth") == 128  # drawn, not a broken image
    loaded = page.eval_on_selector_all(
        "img.panosc-thumb", "imgs => imgs.filter(i => i.naturalWidth > 0).length"
    )
    assert loaded == page.locator("img.panosc-thumb").count()  # every demo file has a plot
    page.screenshot(path=artifacts / "20-datasets-thumbnails.png", full_page=True)
    assert_accessible(page)

    # Its page, reached by keyboard: the title link, focused and Enter.
    link = row.get_by_role("link", name=TITLE)
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/hub/datasets/{CEO2}")
    expect(page.get_by_role("heading", level=1)).to_have_text(TITLE)
    facts = page.locator("#panosc-facts")
    expect(facts).to_contain_text("ES1001")
    expect(facts).to_contain_text("X-ray powder diffraction", ignore_case=True)
    expect(page.locator("#panosc-availability")).to_have_text("Embargoed until 2031-09-01")
    preview = page.locator("#panosc-preview")
    expect(preview).to_be_visible()
    page.wait_for_function("() => document.getElementById('panosc-preview').complete")
    assert preview.evaluate("img => img.naturalWidth") == 128
    tree = page.locator("#panosc-tree")
    expect(tree.get_by_role("row").filter(has_text="NXdetector")).to_have_count(1)
    expect(tree).to_contain_text("1024 \u00d7 1024")
    page.screenshot(path=artifacts / "21-dataset-page.png")  # what a researcher sees first
    page.screenshot(path=artifacts / "21-dataset-page-full.png", full_page=True)
    assert_accessible(page)

    # Open in JupyterLab: the server starts and JupyterLab opens in the dataset's folder.
    page.get_by_role("link", name="Open in JupyterLab").click()
    page.wait_for_url(
        f"**/user/{USER}/*/lab/tree/datasets/ES1001/ceo2_powder_0001**", timeout=120_000
    )
    expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
    expect(page.locator(".jp-DirListing-item", has_text="ceo2_powder_0001.nxs")).to_be_visible()
    page.screenshot(path=artifacts / "22-dataset-opened-in-jupyterlab.png")
    name = re.search(rf"/user/{USER}/([^/]+)/lab", page.url)[1]

    page.goto(f"{demo.url}/hub/datasets/{CEO2}")
    assert stop_server(page, name) in (202, 204)
    context.close()
