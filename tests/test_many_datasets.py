"""An instrument scientist who may read far more datasets than a page can hold.

A real hub with the embedded catalogue over 1,200 NeXus datasets in 12 proposals, all of them
readable by the group ``staff`` (proposals.yaml's access groups), and a real OIDC provider.
The staff member pages and searches ``/hub/datasets`` and gets a spawn form of a bounded
size that says where the rest are; a member of one proposal sees all of theirs as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import h5py
import pytest
import yaml
from playwright.sync_api import Browser, expect

from portal.handlers import PAGE_SIZE
from spawner.form import FORM_LIMIT
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e

PROPOSALS = [f"ST{n:03d}" for n in range(12)]
PER_PROPOSAL = 100
TOTAL = len(PROPOSALS) * PER_PROPOSAL
DASH = "\u2013"  # en dash, as between page numbers
STAFF, MEMBER = "irene@umbrella.test", "paul@umbrella.test"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,200 small NeXus datasets, one a minute: dataset n of proposal p is titled
    "Scan p-n", so that every title is unique and findable."""
    root = tmp_path_factory.mktemp("many") / "data"
    start = datetime(2025, 1, 1, tzinfo=UTC)
    for p, proposal in enumerate(PROPOSALS):
        for n in range(PER_PROPOSAL):
            folder = root / proposal / "ID11" / f"scan_{n:03d}"
            folder.mkdir(parents=True)
            with h5py.File(folder / f"scan_{n:03d}.nxs", "w") as f:
                entry = f.create_group("entry")
                entry.attrs["NX_class"] = "NXentry"
                entry["title"] = f"Scan {p}-{n}"
                entry["definition"] = "NXmonopd"
                entry["start_time"] = (start + timedelta(minutes=p * PER_PROPOSAL + n)).isoformat()
    rules = {
        proposal: {
            "members": ["paul"] if proposal == PROPOSALS[0] else [],
            "access_groups": ["staff"],
        }
        for proposal in PROPOSALS
    }
    (root / "proposals.yaml").write_text(yaml.safe_dump({"proposals": rules}))
    return root


@pytest.fixture(scope="module")
def hub(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    provider = Provider(free_port(), folder / "op.log")
    provider.start()
    provider.set_user(STAFF, preferred_username="irene", groups=["researchers", "staff"])
    provider.set_user(MEMBER, preferred_username="paul", groups=["researchers"])
    h = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-many",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
        },
        folder,
    )
    h.start()
    h.issuer = provider.issuer  # for the browser test
    yield h
    h.stop()
    provider.stop()


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-pid="([^"]+)"', html)


def count(html: str) -> str:
    return re.search(r'<span class="panosc-count">([^<]*)</span>', html)[1].strip()


def page(client: PortalClient, path: str) -> str:
    """The page's text as the browser reads it (UTF-8, which JupyterHub does not declare)."""
    answer = client.click(path)
    assert answer.status_code == 200, (path, answer.status_code)
    return answer.content.decode()


def test_the_datasets_page_pages_and_searches_100_times_a_page(hub: Hub) -> None:
    irene = PortalClient(hub.url)
    assert irene.login(STAFF).status_code == 200
    first = page(irene, "/hub/datasets")
    assert count(first) == f"1{DASH}{PAGE_SIZE} of {TOTAL:,}"
    page_one = rows(first)
    assert len(page_one) == PAGE_SIZE
    assert page_one[0] == f"{PROPOSALS[-1]}/ID11/scan_{PER_PROPOSAL - 1:03d}"  # newest first
    following = re.search(r'rel="next" href="([^"]+)"', first)[1]
    second = page(irene, "/hub/datasets" + following.replace("&amp;", "&"))
    assert count(second) == f"{PAGE_SIZE + 1}{DASH}{2 * PAGE_SIZE} of {TOTAL:,}"
    assert not set(rows(second)) & set(page_one)
    assert 'rel="prev"' in second

    last = page(irene, f"/hub/datasets?offset={TOTAL - PAGE_SIZE}")
    assert count(last) == f"{TOTAL - PAGE_SIZE + 1:,}{DASH}{TOTAL:,} of {TOTAL:,}"
    assert 'rel="next"' not in last

    found = page(irene, "/hub/datasets?q=Scan+7-42")
    assert count(found) == f"1{DASH}1 of 1"
    assert rows(found) == [f"{PROPOSALS[7]}/ID11/scan_042"]
    narrowed = page(irene, f"/hub/datasets?proposal={PROPOSALS[3]}&offset=50")
    assert count(narrowed) == f"51{DASH}100 of {PER_PROPOSAL}"
    assert "proposal=" in narrowed.split('rel="prev" href="')[1].split('"')[0]


def test_the_spawn_form_lists_the_newest_and_says_where_the_rest_are(hub: Hub) -> None:
    irene = PortalClient(hub.url)
    assert irene.login(STAFF).status_code == 200
    form = page(irene, "/hub/spawn")
    assert len(re.findall(r'name="datasets" value=', form)) == FORM_LIMIT
    assert f"The {FORM_LIMIT} newest of the {TOTAL:,}" in form
    assert 'href="/hub/datasets"' in form

    paul = PortalClient(hub.url)
    assert paul.login(MEMBER).status_code == 200
    mine = page(paul, "/hub/spawn")
    assert len(re.findall(r'name="datasets" value=', mine)) == PER_PROPOSAL
    assert "newest of the" not in mine


def test_in_the_browser(hub: Hub, browser: Browser, artifacts: Path) -> None:
    tab = browser.new_page(viewport={"width": 1400, "height": 900})
    tab.set_default_timeout(60_000)
    tab.goto(f"{hub.url}/hub/oauth_login?next=/hub/datasets")
    tab.wait_for_url(f"{hub.issuer}/**")
    tab.locator(f"button[value='{STAFF}']").click()
    tab.wait_for_url("**/hub/datasets")
    expect(tab.locator(".panosc-count").first).to_have_text(f"1{DASH}{PAGE_SIZE} of {TOTAL:,}")
    tab.get_by_role("link", name="Next").first.click()
    expect(tab.locator(".panosc-count").first).to_have_text(
        f"{PAGE_SIZE + 1}{DASH}{2 * PAGE_SIZE} of {TOTAL:,}"
    )
    tab.screenshot(path=artifacts / "11-datasets-paged.png")
