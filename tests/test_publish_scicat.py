"""Publishing to SciCat end to end: a real hub, a real OIDC provider, the form at /hub/publish,
and the rebuilt SciCat server (:mod:`tests.support.fake_scicat`), which validates the body as
SciCat's DTOs do and refuses what SciCat refuses.

The portal's SciCat account is a functional account of proposal MA1234's group, as a facility
gives one: SciCat lets it create datasets of that group only (``ownerGroup``), so publishing
alice's ES1001 results is refused by SciCat itself, and the refusal must reach the form.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.demo.sampledata import DEMO_USERS
from tests.support.catalogue_examples import MATRIX, TRUST, scicat_server
from tests.support.fake_scicat import SciCatServer, SciCatUser, derived_problems
from tests.support.net import free_port
from tests.support.portal_client import PortalClient
from tests.support.records import write_record
from tests.support.umbrella import Hub, Provider

pytestmark = pytest.mark.e2e

INPUT = MATRIX["member"]  # MA1234's XRF map: alice may read it
DIGEST = "sha256:" + "ef" * 32


class Site:
    """The hub, its SciCat and alice's processed areas (MA1234 and ES1001, each with results
    and a record)."""

    def __init__(self, folder: Path, scicat: SciCatServer, url: str, provider: Provider) -> None:
        self.scicat = scicat
        self.processed = folder / "processed"
        self.records = {}
        for proposal in ("MA1234", "ES1001"):
            results = self.processed / proposal / "results" / "fit-1"
            results.mkdir(parents=True)
            (results / "peaks.csv").write_text("energy,counts\n1,2\n")
            self.records[proposal] = write_record(
                self.processed / proposal, [INPUT], server=f"lab-{proposal}", digest=DIGEST
            )
        token = scicat.issue("portal")
        self.hub = Hub(
            {
                "auth": {
                    "issuer": provider.issuer,
                    "client_id": "portal-publish-scicat",
                    "client_secret": "s",
                    "allowed_groups": ["researchers"],
                },
                "catalogue": {
                    "backend": "scicat",
                    "scicat": {"url": url, "auth_mode": "service", "timeout": 5},
                },
                "spawner": {
                    "home_dir": str(folder / "homes/{username}"),
                    "processed_root": str(self.processed),
                },
                "extra_config": {
                    "SciCatCatalogue": {"service_token": token, "trusted_writers": TRUST}
                },
            },
            folder,
        )

    def alice(self) -> PortalClient:
        client = PortalClient(self.hub.url)
        assert client.login(DEMO_USERS["alice"]["sub"]).status_code == 200
        return client

    def publish(self, client: PortalClient, proposal: str):
        form = {
            "_xsrf": client.http.cookies.get("_xsrf", path="/hub/") or "",
            "proposal": proposal,
            "folder": "results/fit-1",
            "records": self.records[proposal],
            "title": f"Fitted peaks of {proposal}",
            "description": "Peaks fitted from the XRF map.",
        }
        return client.http.post(
            f"{client.hub_url}/hub/publish", data=form, timeout=60, allow_redirects=False
        )

    def created(self) -> list[dict]:
        """The derived datasets SciCat holds."""
        return [d for d in self.scicat.datasets if d.get("type") == "derived"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("publish-scicat")
    provider = Provider(free_port(), folder / "op.log")
    provider.start()
    claims = {k: v for k, v in DEMO_USERS["alice"].items() if k != "sub"}
    provider.set_user(DEMO_USERS["alice"]["sub"], **claims)
    scicat = scicat_server()
    scicat.users["portal"] = SciCatUser(
        "portal", "portal@example-facility.eu", frozenset({"MA1234"}), "pw"
    )
    with scicat.running() as url:
        s = Site(folder, scicat, url, provider)
        s.hub.start()
        try:
            yield s
        finally:
            s.hub.stop()
            provider.stop()


def test_publishing_through_the_form_registers_a_valid_derived_dataset(site: Site) -> None:
    alice = site.alice()
    form = alice.click("/hub/publish?proposal=MA1234")
    assert form.status_code == 200 and site.records["MA1234"] in form.text
    before = len(site.created())
    answer = site.publish(alice, "MA1234")
    assert answer.status_code == 201, answer.text[-800:]
    [body] = [
        s.body for s in site.scicat.seen if s.method == "POST" and s.path == "/api/v3/Datasets"
    ][-1:]
    assert derived_problems(body) == []
    assert body["inputDatasets"] == [INPUT.pid]
    assert body["usedSoftware"] == [f"xrf panosc/xrf:0.1.0@{DIGEST}"]
    assert body["ownerGroup"] == "MA1234" and body["proposalId"] == "MA1234"
    assert body["sourceFolder"] == str(site.processed.resolve() / "MA1234/results/fit-1")
    assert body["numberOfFiles"] == 1
    assert body["jobParameters"]["provenance"] == [site.records["MA1234"]]
    [created] = site.created()[before:]
    assert created["datasetName"] == "Fitted peaks of MA1234"
    # the user is told, with the new pid and a link to its page
    assert "Published" in answer.text and created["pid"] in answer.text
    assert f'href="/hub/datasets/{created["pid"]}"' in answer.text


def test_a_refusal_from_scicat_comes_back_on_the_form_and_registers_nothing(site: Site) -> None:
    """alice is a member of ES1001, but the portal's SciCat account may not create datasets
    of its group: SciCat answers 403, and the form says so, naming SciCat and its reason."""
    alice = site.alice()
    before = len(site.scicat.datasets)
    answer = site.publish(alice, "ES1001")
    assert answer.status_code == 400, answer.text[-800:]
    assert "SciCat refused the derived dataset (HTTP 403)" in answer.text
    assert "Unauthorized to create this dataset" in answer.text
    assert "cannot answer right now" not in answer.text  # a refusal, not an outage
    assert len(site.scicat.datasets) == before
