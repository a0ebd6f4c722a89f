"""In the browser: the spawn form's environment cards, on the demo (local backend).

bob signs in through the provider's page and opens the spawn form without starting
anything. The cards show each environment's name, description, techniques by name and main
software with the versions his server would run (the hub's own Python on this backend);
checking a powder-diffraction dataset selects the diffraction card and says why, live; the
cards are one radio group that the keyboard drives and that the form posts.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from portal.demo.sampledata import DEMO_USERS
from spawner.environments import load_environments
from tests.support.accessibility import assert_accessible
from tests.support.browser import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

USER = "bob"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
SAXS = "OD2019/ID02/agbh_saxs_0001"


@pytest.fixture
def form(browser: Browser, demo) -> Page:
    """bob's spawn form for a new named server, signed in through the provider's page (his
    default server may be running: another browser test starts it)."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    sign_in(page, demo.url, demo.issuer, DEMO_USERS[USER]["sub"], f"/hub/spawn/{USER}/cards")
    yield page
    context.close()


def card(page: Page, name: str):
    return page.locator(".panosc-env").filter(has=page.locator(f"#panosc-env-{name}"))


def posted_environment(page: Page) -> str:
    return page.evaluate(
        "new FormData(document.getElementById('spawn_form')).getAll('environment').join()"
    )


def test_cards_show_what_each_environment_is_and_why_it_is_chosen(
    form: Page, artifacts: Path
) -> None:
    page = form
    environments = load_environments()
    expect(page.get_by_role("group", name="Environment")).to_be_visible()
    expect(page.locator("#panosc-env-help")).to_contain_text("the portal's own Python")
    expect(page.get_by_role("radio")).to_have_count(len(environments) + 2)  # + server types
    for env in environments.values():
        shown = card(page, env.name)
        expect(shown.locator(".panosc-env-name")).to_have_text(env.name)
        expect(shown).to_contain_text(env.description)
    diffraction = card(page, "diffraction")
    expect(diffraction).to_contain_text(
        "Techniques: powder diffraction, small angle scattering, wide angle x-ray scattering."
    )
    expect(card(page, "base")).to_contain_text("Techniques: any technique.")
    # On the local backend every server runs in the hub's Python: its versions, and only
    # the software it has (no pyFAI here, so none is promised).
    silx = importlib.metadata.version("silx")
    expect(diffraction).to_contain_text(f"silx {silx}")
    expect(card(page, "base")).to_contain_text(
        f"jupyterlab {importlib.metadata.version('jupyterlab')}"
    )
    expect(diffraction.locator(".panosc-env-software")).not_to_contain_text("pyFAI")
    expect(page.get_by_role("radio", name="base", exact=True)).to_be_checked()
    expect(page.locator(".panosc-env-reason:visible")).to_have_count(0)

    # A powder pattern makes diffraction the default, and its card says so.
    page.fill("#panosc-filter", "ceo2")
    page.locator(".panosc-dataset:visible input").check()
    expect(page.get_by_role("radio", name="diffraction")).to_be_checked()
    expect(diffraction.locator(".panosc-env-reason")).to_have_text(
        f"Chosen because {CEO2} is x-ray powder diffraction."
    )
    page.fill("#panosc-filter", "silver behenate")
    page.locator(".panosc-dataset:visible input").check()
    expect(diffraction.locator(".panosc-env-reason")).to_have_text(
        f"Chosen because {CEO2} is x-ray powder diffraction and {SAXS} is small angle"
        " x-ray scattering."
    )
    page.fill("#panosc-filter", "")
    diffraction.scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "spawn-form-environment-cards.png", full_page=True)
    assert_accessible(page)

    # Unchecking both goes back to the general environment, with no reason left.
    page.locator(f".panosc-dataset input[value='{CEO2}']").uncheck()
    page.locator(f".panosc-dataset input[value='{SAXS}']").uncheck()
    expect(page.get_by_role("radio", name="base", exact=True)).to_be_checked()
    expect(page.locator(".panosc-env-reason:visible")).to_have_count(0)
    assert posted_environment(page) == "base"


def test_the_keyboard_picks_a_card_and_the_form_posts_it(form: Page, artifacts: Path) -> None:
    page = form
    page.locator(f".panosc-dataset input[value='{CEO2}']").check()
    diffraction = page.get_by_role("radio", name="diffraction")
    expect(diffraction).to_be_checked()

    # Tab from the server type lands on the checked card; arrows move along the group.
    page.get_by_role("radio", name="JupyterLab").focus()
    page.keyboard.press("Tab")
    expect(diffraction).to_be_focused()
    page.keyboard.press("ArrowDown")
    tomography = page.get_by_role("radio", name="tomography")
    expect(tomography).to_be_checked()
    expect(tomography).to_be_focused()
    card(page, "tomography").scroll_into_view_if_needed()
    page.screenshot(path=artifacts / "spawn-form-environment-by-keyboard.png")
    # The datasets still suggest diffraction, and its card says so; the hand choice stays.
    expect(card(page, "diffraction").locator(".panosc-env-reason")).to_have_text(
        f"Suggested because {CEO2} is x-ray powder diffraction."
    )
    page.locator(f".panosc-dataset input[value='{SAXS}']").check()
    expect(tomography).to_be_checked()
    assert posted_environment(page) == "tomography"
    assert_accessible(page)
