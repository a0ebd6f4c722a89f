"""What a researcher sees when the catalogue is down or answers nonsense: a clear page.

A real hub and a real OIDC provider; the catalogue is SciCat, first unreachable, then the
test SciCat server (:mod:`tests.support.fake_scicat`) serving a record the portal cannot read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from portal.demo.sampledata import DEMO_USERS
from tests.support.catalogue_examples import FACILITY
from tests.support.fake_scicat import SciCatServer, SciCatUser, scicat_record
from tests.support.net import closed_port, free_port
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = Provider(free_port(), tmp_path_factory.mktemp("op") / "op.log")
    p.start()
    claims = {k: v for k, v in DEMO_USERS["alice"].items() if k != "sub"}
    p.set_user(DEMO_USERS["alice"]["sub"], **claims)
    yield p
    p.stop()


def hub_for(provider: Provider, folder, scicat: dict, extra: dict) -> Hub:
    return Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-catalogue-pages",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
            },
            "catalogue": {"backend": "scicat", "scicat": scicat},
            "spawner": {"home_dir": str(folder / "homes/{username}")},
            "extra_config": extra,
        },
        folder,
    )


def pages(hub: Hub) -> dict[str, tuple[int, str, float]]:
    alice = PortalClient(hub.url)
    assert alice.login(DEMO_USERS["alice"]["sub"]).status_code == 200
    seen = {}
    for path in ("/hub/datasets", "/hub/spawn", "/hub/open?dataset=20.500.12269/x"):
        started = time.monotonic()
        page = alice.click(path, timeout=60)
        seen[path] = (page.status_code, page.text, time.monotonic() - started)
    return seen


def test_an_unreachable_catalogue_is_a_clear_page_within_the_timeout(
    provider: Provider, tmp_path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    hub = hub_for(provider, tmp_path, {"url": url, "timeout": 1, "retries": 1}, {})
    hub.start()
    try:
        seen = pages(hub)
    finally:
        hub.stop()
    status, text, took = seen["/hub/datasets"]
    assert status == 200 and "The catalogue cannot answer right now" in text
    assert "Connection refused" in text and took < 10
    status, text, _ = seen["/hub/spawn"]
    assert status == 200 and "Your datasets cannot be listed right now" in text
    status, text, _ = seen["/hub/open?dataset=20.500.12269/x"]
    assert status == 503 and "The catalogue cannot answer right now" in text


def test_nonsense_from_the_catalogue_is_named_not_shown_as_an_empty_list(
    provider: Provider, tmp_path
) -> None:
    records = [scicat_record(e) for e in FACILITY]
    records[0]["size"] = "twelve gigabytes"
    server = SciCatServer(
        datasets=records,
        users={"portal": SciCatUser("portal", "", frozenset({"admin"}), "pw")},
    )
    with server.running() as url:
        token = server.issue("portal")
        scicat = {"url": url, "auth_mode": "service", "timeout": 2}
        hub = hub_for(provider, tmp_path, scicat, {"SciCatCatalogue": {"service_token": token}})
        hub.start()
        try:
            seen = pages(hub)
        finally:
            hub.stop()
    status, text, _ = seen["/hub/datasets"]
    assert status == 200 and "answered a dataset the portal cannot read" in text
    assert "twelve gigabytes" in text  # the offending value, so the catalogue's admins can fix it
