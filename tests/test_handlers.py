"""The portal's own hub pages on JupyterHub's test hub, without Docker: ``/hub/datasets``,
every refusal of ``/hub/open``, and the server-name clash.

What a researcher sees when they search their datasets, follow a catalogue's "open in portal"
link (from the portal, from another site, forged, or for data they may not read) or open a
second dataset whose name shortens like the first. The hub is JupyterHub's ``MockHub``
(:mod:`tests.support.mock_hub`), as dockerspawner's and kubespawner's tests use it; its base
URL (``/@/space%20word/``) is an awkward one on purpose. Every test takes well under a second.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from html import unescape
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import async_requests

from portal.catalogue.base import CatalogueUnavailable
from portal.catalogue.local import LocalCatalogue, index_tree
from portal.demo.sampledata import generate
from tests.support.mock_hub import SignedIn, portal_mock_hub, sign_in

pytestmark = pytest.mark.asyncio(loop_scope="module")  # the hub's loop, for the whole module

XRF = "MA1234/ID21/xrf_map_0001"  # alice's proposal, embargoed
CEO2 = "ES1001/ID22/ceo2_powder_0001"  # alice's and bob's proposal, embargoed
SAXS = "OD2019/ID02/agbh_saxs_0001"  # open data
TOMO = "IH2002/ID19/phantom_tomo_0001"  # bob's proposal, embargoed; alice is not a member
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}  # a click on one of the portal's own pages
XRF_SERVER = "lab-xrf-map-0001"


@pytest.fixture(scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[MockHub]:
    base = tmp_path_factory.mktemp("handlers")
    generate(base / "data")
    index_tree(base / "data", str(base / "catalogue.sqlite"))
    async with portal_mock_hub(base / "data", base / "catalogue.sqlite", base / "state") as h:
        yield h


@pytest.fixture
async def alice(hub: MockHub) -> SignedIn:
    return await sign_in(hub, "alice")


def refusal(page, status: int, message: str) -> None:
    """The portal's error page, with the message a person reads and the way back."""
    text = unescape(page.text)
    assert page.status_code == status, text[-2000:]
    assert message in text, text[-2000:]
    assert "Back to your datasets" in text


# -- /hub/datasets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown", "hidden"),
    [
        ("alice", {XRF, CEO2, SAXS}, {TOMO}),
        ("bob", {TOMO, CEO2, SAXS}, {XRF}),
        ("nobody", {SAXS}, {XRF, CEO2, TOMO}),  # no proposal at all: open data only
    ],
)
async def test_the_datasets_page_lists_only_what_the_user_may_read(
    hub: MockHub, name: str, shown: set[str], hidden: set[str]
) -> None:
    page = await (await sign_in(hub, name)).get("datasets")
    assert page.status_code == 200
    assert {pid for pid in shown if pid in page.text} == shown
    assert {pid for pid in hidden if pid in page.text} == set()


async def test_an_unknown_technique_is_named_with_how_to_write_one(alice: SignedIn) -> None:
    page = await alice.get("datasets?technique=nonsense")
    assert page.status_code == 200
    assert "unknown technique" in page.text and "PaNET01188" in page.text


async def test_a_backend_lookup_error_is_not_an_unknown_technique(
    alice: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``KeyError`` inside a backend once read as "unknown technique"."""

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("instrument")

    monkeypatch.setattr(LocalCatalogue, "search_page", broken)
    page = await alice.get("datasets?technique=PaNET01177")
    assert page.status_code == 500
    assert "unknown technique" not in page.text


async def test_a_catalogue_outage_is_said_in_words_on_the_datasets_page(
    alice: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise CatalogueUnavailable("https://scicat.example.eu: connection refused")

    monkeypatch.setattr(LocalCatalogue, "search_page", down)
    page = await alice.get("datasets")
    assert page.status_code == 200
    assert "The catalogue cannot answer right now" in page.text
    assert "connection refused" in page.text


# -- /hub/open: every refusal ----------------------------------------------------------------


@pytest.mark.parametrize(
    "pid",
    [
        TOMO,  # exists, but alice may not read it
        "XX0000/NONE/nothing",  # does not exist
        "",  # empty
        "MA1234/../IH2002/ID19/phantom_tomo_0001",  # a way out of her proposal
        "MA1234/ID21/xrf_map_0001/../../../IH2002/ID19/phantom_tomo_0001",
    ],
)
async def test_open_refuses_an_unknown_or_forbidden_dataset_in_the_same_words(
    alice: SignedIn, pid: str
) -> None:
    page = await alice.get(f"open?dataset={quote(pid, safe='/')}", headers=SAME_ORIGIN)
    refusal(page, 404, f"Cannot open this dataset: dataset {pid!r} was not found,")
    assert "or you do not have access to it" in page.text
    assert "Phantom" not in page.text and "Location" not in page.headers  # nothing leaks


@pytest.mark.parametrize("server_type", ["vnc", "desktop", ""])
async def test_open_refuses_a_server_type_the_portal_does_not_run(
    alice: SignedIn, server_type: str
) -> None:
    """``desktop`` is a portal server type, but not of this hub's spawner (MockSpawner's
    backend runs JupyterLab only)."""
    page = await alice.get(f"open?dataset={XRF}&type={server_type}", headers=SAME_ORIGIN)
    refusal(page, 400, f"This portal cannot open a {server_type!r} server; it offers lab.")


@pytest.mark.parametrize("server_type", ["vnc", "desktop"])
async def test_a_new_session_of_a_type_the_portal_does_not_run_is_refused(
    alice: SignedIn, server_type: str
) -> None:
    page = await alice.get(f"open?type={server_type}", headers=SAME_ORIGIN)
    refusal(page, 400, f"This portal cannot open a {server_type!r} server.")


async def test_open_says_when_the_catalogue_cannot_answer(
    alice: SignedIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise CatalogueUnavailable("https://scicat.example.eu: timed out after 10 s")

    monkeypatch.setattr(LocalCatalogue, "get", down)
    page = await alice.get(f"open?dataset={XRF}", headers=SAME_ORIGIN)
    refusal(page, 503, "The catalogue cannot answer right now: https://scicat.example.eu")


async def test_a_post_without_the_xsrf_token_starts_nothing(alice: SignedIn) -> None:
    """The confirm page's Start button POSTs with the session's token; a form on another
    site cannot know it."""
    page = await alice.post(f"open?dataset={XRF}", data={})
    assert page.status_code == 403
    assert "XSRF" in page.text or "_xsrf" in page.text
    assert "Location" not in page.headers


async def test_a_post_with_the_xsrf_token_is_refused_like_a_get(alice: SignedIn) -> None:
    page = await alice.post(f"open?dataset={TOMO}", data={"_xsrf": alice.xsrf})
    refusal(page, 404, f"Cannot open this dataset: dataset {TOMO!r} was not found,")
    page = await alice.post(f"open?dataset={XRF}&type=vnc", data={"_xsrf": alice.xsrf})
    refusal(page, 400, "This portal cannot open a 'vnc' server; it offers lab.")
    started = await alice.post(f"open?dataset={XRF}", data={"_xsrf": alice.xsrf})
    assert started.status_code == 302
    assert urlsplit(started.headers["Location"]).path.endswith(f"/spawn/alice/{XRF_SERVER}")


async def test_a_second_dataset_parameter_cannot_smuggle_a_forbidden_one(alice: SignedIn) -> None:
    """One dataset per link: of a repeated parameter the last counts, and is checked."""
    page = await alice.get(f"open?dataset={XRF}&dataset={TOMO}", headers=SAME_ORIGIN)
    refusal(page, 404, f"dataset {TOMO!r} was not found")
    page = await alice.get(f"open?dataset={TOMO}&dataset={XRF}", headers=SAME_ORIGIN)
    assert page.status_code == 302
    assert parse_qs(urlsplit(page.headers["Location"]).query)["opt-datasets"] == [XRF]


async def test_a_signed_out_visitor_is_sent_to_sign_in_first(hub: MockHub, alice) -> None:
    page = await async_requests.get(
        alice.url(f"open?dataset={XRF}"),
        headers={"Sec-Fetch-Mode": "navigate"},
        allow_redirects=False,
    )
    assert page.status_code == 302
    target = urlsplit(page.headers["Location"])
    assert target.path.endswith("/hub/login") and "open" in parse_qs(target.query)["next"][0]


async def test_open_from_another_site_asks_before_starting_anything(alice: SignedIn) -> None:
    """A link on another site (or in a mail) must not start a server for a signed-in user."""
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Referer": "https://evil.example/"}, {}):
        page = await alice.get(f"open?dataset={XRF}", headers=headers)
        assert page.status_code == 200, headers
        assert "<form" in page.text and "Start" in page.text and XRF in page.text
        assert 'name="_xsrf"' in page.text
        assert "Location" not in page.headers


async def test_open_from_the_portal_goes_to_a_signed_spawn_link(alice: SignedIn) -> None:
    page = await alice.get(f"open?dataset={XRF}", headers=SAME_ORIGIN)
    assert page.status_code == 302
    target = urlsplit(page.headers["Location"])
    assert target.path.endswith(f"/hub/spawn/alice/{XRF_SERVER}")
    query = parse_qs(target.query)
    assert query["opt-datasets"] == [XRF] and query["opt-type"] == ["lab"]
    assert query["opt-environment"] == ["xrf"] and query["opt-token"]


# -- server names ----------------------------------------------------------------------------


async def running(hub: MockHub, name: str, options: dict) -> None:
    """alice's server ``name`` started (by JupyterHub's mock spawner) with these options."""
    user = hub.users["alice"]
    user.get_or_create_spawner(name, name)
    await user.spawn(name, options=options)
    assert user.spawners[name].active and user.spawners[name].user_options == options


async def test_a_second_dataset_whose_name_shortens_alike_gets_its_own_server(
    hub: MockHub, alice: SignedIn
) -> None:
    """Another proposal's ``xrf_map_0001`` runs in ``lab-xrf-map-0001``: alice's must not
    land in it, but in that name with a digest of its pid."""
    await running(hub, XRF_SERVER, {"type": "lab", "datasets": ["MA9999/ID21/xrf_map_0001"]})
    try:
        page = await alice.get(f"open?dataset={XRF}", headers=SAME_ORIGIN)
        assert page.status_code == 302
        name = urlsplit(page.headers["Location"]).path.rsplit("/", 1)[-1]
        assert name != XRF_SERVER
        assert name.startswith(f"{XRF_SERVER}-") and len(name) == len(XRF_SERVER) + 7
    finally:
        await hub.users["alice"].stop(XRF_SERVER)


async def test_opening_the_same_dataset_again_goes_to_its_running_server(
    hub: MockHub, alice: SignedIn
) -> None:
    await running(hub, XRF_SERVER, {"type": "lab", "datasets": [XRF]})
    try:
        page = await alice.get(f"open?dataset={XRF}", headers=SAME_ORIGIN)
        assert page.status_code == 302
        assert page.headers["Location"].endswith(f"/user/alice/{XRF_SERVER}/")
    finally:
        await hub.users["alice"].stop(XRF_SERVER)
