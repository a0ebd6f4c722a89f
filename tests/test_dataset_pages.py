"""A dataset's page and thumbnail on a real hub: what a researcher sees, and what nobody else can.

A real hub with the embedded catalogue over the demo's sample data (plus one dataset whose
file was written to inject HTML), and a real OIDC provider. alice reads MA1234, ES1001 and
the open OD2019; bob also reads IH2002, which is embargoed and not alice's.
"""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser

from portal.demo.sampledata import DEMO_USERS, generate
from tests.support.accessibility import assert_accessible
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, demo_provider, local_hub

pytestmark = pytest.mark.e2e

CEO2 = "ES1001/ID22/ceo2_powder_0001"
EMBARGOED = "IH2002/ID19/phantom_tomo_0001"  # bob's, not alice's
UNKNOWN = "IH2002/ID19/phantom_tomo_0002"
OPEN = "OD2019/ID02/agbh_saxs_0001"
INJECTED = "MA1234/ID21/injected_0001"
HOSTILE = '<img src=x onerror="alert(1)">'


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("pages")
    data = folder / "data"
    generate(data)
    injected = data / INJECTED / "injected_0001.nxs"
    injected.parent.mkdir(parents=True)
    with h5py.File(injected, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["title"] = f"Scan {HOSTILE}"
        entry.create_group(f"<b>{HOSTILE}</b>")
    provider = demo_provider(folder, "alice", "bob")
    h = local_hub(provider, folder, data)
    h.start()
    yield h
    h.stop()
    provider.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    assert client.login(DEMO_USERS["alice"]["sub"]).status_code == 200
    return client


@pytest.fixture(scope="module")
def bob(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    assert client.login(DEMO_USERS["bob"]["sub"]).status_code == 200
    return client


def text(answer) -> str:
    return answer.content.decode()


def test_the_list_shows_a_thumbnail_beside_each_title_linking_to_its_page(
    alice: PortalClient,
) -> None:
    page = alice.click("/hub/datasets")
    assert page.status_code == 200
    html = text(page)
    for pid in (CEO2, OPEN):
        assert f'src="/hub/datasets/{pid}/thumbnail.png"' in html
        assert f'class="panosc-dataset-link" href="/hub/datasets/{pid}"' in html
    assert EMBARGOED not in html


def test_a_thumbnail_is_a_private_png_that_is_never_sniffed(alice: PortalClient) -> None:
    answer = alice.click(f"/hub/datasets/{CEO2}/thumbnail.png")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "image/png"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Cache-Control"] == "private, no-cache"  # gone once access is
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "PNG" and image.size == (128, 128)
    rgb = np.asarray(image.convert("RGB"))
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # a picture, not a flat box


def test_the_dataset_page_says_what_the_dataset_is(alice: PortalClient) -> None:
    page = alice.click(f"/hub/datasets/{CEO2}")
    assert page.status_code == 200
    html = text(page)
    assert "<h1>CeO2 powder diffraction at 0.4 Å, 2D detector at 150 mm</h1>" in html
    facts = dict(re.findall(r'<dt class="col-sm-4">([^<]+)</dt>\s*<dd[^>]*>(.*?)</dd>', html, re.S))
    assert facts["Proposal"] == "ES1001" and facts["Instrument"] == "ID22"
    assert "powder diffraction" in facts["Techniques"].lower()
    assert "2024-10-08" in facts["Started"] and re.fullmatch(r"[\d.]+ [kMG]B", facts["Size"])
    assert facts["Files"] == "2" and facts["Access"] == "Embargoed until 2031-09-01"
    assert 'id="panosc-preview"' in html and f'src="/hub/datasets/{CEO2}/thumbnail.png"' in html
    rows = re.findall(r"<tr>\s*<td[^>]*>(.*?)</td>\s*<td>(.*?)</td>\s*<td>(.*?)</td>", html, re.S)
    tree = {re.sub(r"<[^>]+>", "", name).strip(): (cls, shape) for name, cls, shape in rows}
    assert tree["entry/"] == ("NXentry", "")  # a group, as a path shows it
    assert tree["detector/"] == ("NXdetector", "")
    assert ("", "1024 \u00d7 1024") in tree.values()  # the multiplication sign
    assert f'href="/hub/open?dataset={CEO2}"' in html
    assert f'href="/hub/open?dataset={CEO2}&amp;type=desktop"' not in html  # local: no desktop


def test_open_data_says_public_since(alice: PortalClient) -> None:
    html = text(alice.click(f"/hub/datasets/{OPEN}"))
    assert 'id="panosc-availability">Public since 2021-01-01<' in html


def test_what_the_data_file_wrote_is_shown_as_text_never_as_html(alice: PortalClient) -> None:
    html = text(alice.click(f"/hub/datasets/{INJECTED}"))
    assert HOSTILE not in html
    assert "Scan &lt;img src=x onerror=" in html and "&lt;b&gt;" in html
    assert "No preview for this dataset" in html  # its file has no default plot
    assert alice.click(f"/hub/datasets/{INJECTED}/thumbnail.png").status_code == 404


def normalised(html: str) -> str:
    """The page without what differs between any two requests: the masked XSRF token."""
    return re.sub(r'xsrf_token: "[^"]*"', "", html)


def test_a_dataset_alice_may_not_read_is_the_same_404_as_an_unknown_one(
    alice: PortalClient, bob: PortalClient
) -> None:
    assert bob.click(f"/hub/datasets/{EMBARGOED}").status_code == 200  # it exists
    assert bob.click(f"/hub/datasets/{EMBARGOED}/thumbnail.png").status_code == 200
    for suffix in ("", "/thumbnail.png"):
        hidden = alice.click(f"/hub/datasets/{EMBARGOED}{suffix}")
        unknown = alice.click(f"/hub/datasets/{UNKNOWN}{suffix}")
        assert hidden.status_code == unknown.status_code == 404
        assert normalised(text(hidden)) == normalised(text(unknown))
        assert hidden.headers["Content-Type"] == unknown.headers["Content-Type"]
        assert "phantom" not in text(hidden).lower()  # nothing of the dataset either way
    assert alice.click(f"/hub/datasets/{EMBARGOED}/thumbnail.png").content == (
        b"There is no dataset at this address, or you do not have access to it."
    )


def test_the_pages_need_a_signed_in_user(hub: Hub) -> None:
    anonymous = PortalClient(hub.url)
    for path in (f"/hub/datasets/{OPEN}", f"/hub/datasets/{OPEN}/thumbnail.png"):
        answer = anonymous.http.get(hub.url + path, allow_redirects=False, timeout=30)
        assert answer.status_code == 302 and "/hub/login" in answer.headers["Location"]


@pytest.mark.browser
def test_in_the_browser_a_dataset_without_a_picture_gets_a_neutral_box(
    hub: Hub, browser: Browser, artifacts: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/oauth_login?next=/hub/datasets?q=MA1234")
    page.locator(f"button[value='{DEMO_USERS['alice']['sub']}']").click()
    page.wait_for_url("**/hub/datasets?q=MA1234")
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.panosc-thumb')].every(i => i.complete)"
    )
    missing = page.locator(f"tr[data-pid='{INJECTED}'] img.panosc-thumb")
    drawn = page.locator("tr[data-pid='MA1234/ID21/xrf_map_0001'] img.panosc-thumb")
    assert missing.evaluate("img => img.naturalWidth") == 0
    assert drawn.evaluate("img => img.naturalWidth") > 0
    cover = "img => getComputedStyle(img, '::after').backgroundColor"
    box = missing.evaluate("img => getComputedStyle(img).backgroundColor")
    assert missing.evaluate(cover) == box  # the broken-image icon is covered
    page.screenshot(path=artifacts / "23-datasets-without-a-picture.png")
    assert_accessible(page)
    page.close()
