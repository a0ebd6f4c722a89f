"""The HTTP catalogues (SciCat, PaNOSC Search API) against servers that behave like the real
ones, and who sees what.

The servers (:mod:`tests.support.fake_scicat`, :mod:`tests.support.fake_search_api`) follow the real
servers' code behaviour by behaviour, on a real socket; the tests at the end of this module
show that they refuse what the real servers refuse (the queries of the portal's first
version among them). The access matrix runs over every backend, the local NeXus index
included, SciCat in both API versions and both authentication modes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from traitlets import TraitError

from portal import render, settings
from portal.catalogue import (
    Catalogue,
    CatalogueError,
    CatalogueUnavailable,
    DatasetNotFound,
    catalogue_class,
)
from portal.catalogue.http import CatalogueCredentialsRejected, HttpCatalogue
from portal.catalogue.local import LocalCatalogue
from portal.catalogue.scicat import SciCatCatalogue
from portal.catalogue.search_api import SearchApiCatalogue
from tests.support.catalogue_examples import (
    ALICE,
    BOB,
    FACILITY,
    FUTURE,
    MATRIX,
    PAST,
    POWDER,
    SCANS,
    TODAY,
    TRUST,
    XRF,
    at,
    scicat_server,
)
from tests.support.catalogue_servers import PID_PREFIX, Example, JsonServer
from tests.support.fake_scicat import SciCatUser
from tests.support.fake_search_api import search_api_server
from tests.support.net import closed_port

PAGE = 3  # records per request: every listing needs several pages

#: Each way the portal can be configured against a remote catalogue.
REMOTES: dict[str, tuple[Callable[[], JsonServer], Callable[[str], HttpCatalogue]]] = {
    "scicat-v4-user": (scicat_server, lambda url: SciCatCatalogue(url=url, trusted_writers=TRUST)),
    "scicat-v3-user": (
        scicat_server,
        lambda url: SciCatCatalogue(url=url, api_version="v3", trusted_writers=TRUST),
    ),
    "scicat-v4-service": (
        scicat_server,
        lambda url: SciCatCatalogue(
            url=url,
            auth_mode="service",
            service_username="portal",
            service_password="pw",
            trusted_writers=TRUST,
        ),
    ),
    "scicat-v3-service": (
        scicat_server,
        lambda url: SciCatCatalogue(
            url=url,
            api_version="v3",
            auth_mode="service",
            service_username="portal",
            service_password="pw",
            trusted_writers=TRUST,
        ),
    ),
    "search-api": (
        lambda: search_api_server(FACILITY, publication=[MATRIX["open data"]]),
        lambda url: SearchApiCatalogue(url=url + "/api"),
    ),
}


@dataclass
class Remote:
    """A running test server and a catalogue client configured for it."""

    name: str
    server: JsonServer
    catalogue: HttpCatalogue
    url: str

    def listing_requests(self) -> list:
        """Requests for dataset records (not tokens, whoami or proposals)."""
        return [s for s in self.server.seen if s.path.lower().rstrip("/").endswith("datasets")]


@contextmanager
def running(name: str) -> Iterator[Remote]:
    make_server, make_catalogue = REMOTES[name]
    server = make_server()
    with server.running() as url:
        catalogue = make_catalogue(url)
        catalogue.page_size, catalogue.timeout, catalogue.backoff = PAGE, 2, 0.01
        yield Remote(name, server, catalogue, url)


@pytest.fixture(params=sorted(REMOTES))
def remote(request: pytest.FixtureRequest) -> Iterator[Remote]:
    with running(request.param) as found:
        yield found


@pytest.fixture(params=[name for name in sorted(REMOTES) if name.startswith("scicat")])
def scicat(request: pytest.FixtureRequest) -> Iterator[Remote]:
    with running(request.param) as found:
        yield found


# -- the access matrix, for every backend ------------------------------------------------


def local_backend(tmp_path: Path) -> Catalogue:
    root = tmp_path / "data"
    for e in FACILITY:
        folder = root / e.proposal / e.instrument / e.name
        folder.mkdir(parents=True)
        (folder / "README.txt").write_text(e.title)
    (root / "proposals.yaml").write_text(
        textwrap.dedent(f"""\
        proposals:
          MA1234: {{members: [alice]}}
          IH2002: {{members: [bob]}}
          OD2019: {{public_date: {PAST}}}
          ES1001: {{members: [bob], public_date: {FUTURE}}}
          IN5678: {{access_groups: [tomo-team]}}
        """)
    )
    catalogue = LocalCatalogue(data_root=str(root), index_path=str(tmp_path / "index.sqlite"))
    catalogue.index()
    return catalogue


@pytest.fixture(params=["local", *sorted(REMOTES)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Catalogue]]:
    if request.param == "local":
        yield "local", local_backend(tmp_path)
        return
    make_server, make_catalogue = REMOTES[request.param]
    with make_server().running() as url:
        yield request.param, make_catalogue(url)


def pid_of(name: str, e: Example) -> str:
    return f"{e.proposal}/{e.instrument}/{e.name}" if name == "local" else e.pid


# Group grants and shares: the Search API carries neither, and proposals.yaml no shares.
EXPECTED = {
    "member": set(),
    "non-member": None,
    "open data": set(),
    "embargoed": None,
    "group": {"search-api"},
    "shared": {"search-api", "local"},
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_access_matrix(backend: tuple[str, Catalogue], case: str) -> None:
    name, catalogue = backend
    pid = pid_of(name, MATRIX[case])
    listed = {d.pid for d in catalogue.datasets_for(ALICE)}
    excluded = EXPECTED[case]
    if excluded is not None and name not in excluded:
        assert catalogue.get(pid, ALICE).pid == pid
        assert pid in listed
    else:
        with pytest.raises(DatasetNotFound):
            catalogue.get(pid, ALICE)
        assert pid not in listed


def test_embargoed_and_unknown_pids_answer_alike(backend: tuple[str, Catalogue]) -> None:
    name, catalogue = backend
    embargoed = pid_of(name, MATRIX["embargoed"])
    unknown = embargoed.replace("ceo2_powder_0001", "no_such_0001")
    answers = []
    for pid in (embargoed, unknown):
        with pytest.raises(CatalogueError) as info:
            catalogue.get(pid, ALICE)
        answers.append((type(info.value), str(info.value).replace(pid, "PID")))
    assert answers[0] == answers[1]
    assert answers[0][0] is DatasetNotFound


def test_members_see_their_embargoed_data_and_datasets_are_mapped(
    backend: tuple[str, Catalogue],
) -> None:
    name, catalogue = backend
    ceo2 = catalogue.get(pid_of(name, MATRIX["embargoed"]), BOB)
    assert (ceo2.proposal, ceo2.instrument) == ("ES1001", "ID22")
    assert ceo2.public_date is None or ceo2.public_date > TODAY
    if name != "local":  # the local index reads techniques and times from NeXus files
        assert ceo2.title == "CeO2 powder" and ceo2.techniques == (POWDER,)
        assert ceo2.start_time == at(4)
        assert ceo2.location == MATRIX["embargoed"].storage()
        newest_first = [d.start_time for d in catalogue.datasets_for(ALICE)]
        assert newest_first == sorted(newest_first, reverse=True)


@pytest.mark.parametrize("mode", ["user", "service"])
def test_the_portal_filters_even_when_scicat_does_not(mode: str) -> None:
    server = scicat_server()
    server.leaky = True  # a broken server that returns everything to everyone
    with server.running() as url:
        catalogue = SciCatCatalogue(url=url, auth_mode=mode, service_username="portal")
        catalogue.service_password = "pw"
        seen = names(catalogue.datasets_for(ALICE))
        assert "phantom_tomo_0001" not in seen and "ceo2_powder_0001" not in seen
        with pytest.raises(DatasetNotFound):
            catalogue.get(PID_PREFIX + "phantom_tomo_0001", ALICE)


# -- paging and filters ------------------------------------------------------------------


def names(datasets: list) -> set[str]:
    return {d.pid.removeprefix(PID_PREFIX) for d in datasets}


def alice_sees(remote: Remote) -> set[str]:
    """Her proposal's data and open data; her group's and shared data where the API has them."""
    mine = {"xrf_map_0001", "agbh_saxs_0001"} | {e.name for e in SCANS}
    return mine | ({"team_tomo_0001", "shared_xrf_0001"} if "scicat" in remote.name else set())


def test_listing_pages_until_a_short_page(remote: Remote) -> None:
    assert names(remote.catalogue.datasets_for(ALICE)) == alice_sees(remote)
    readable = len(alice_sees(remote)) if "scicat" in remote.name else len(FACILITY)
    # SciCat filters on the server (13 records for alice); the Search API serves all 15.
    assert len(remote.listing_requests()) == readable // PAGE + 1


def test_search_api_proposals_come_from_documents_and_pids_with_slashes_work() -> None:
    with running("search-api") as remote:
        search_api_get(remote)


def search_api_get(remote: Remote) -> None:
    remote.catalogue.location_template = "/data/visitor/{proposal}/{instrument}/{dataset}"
    xrf = remote.catalogue.get(PID_PREFIX + "xrf_map_0001", ALICE)
    assert (xrf.proposal, xrf.location) == ("MA1234", "/data/visitor/MA1234/ID21/xrf_map_0001")
    (asked,) = remote.server.seen  # one request: the proposal, with the dataset inside it
    assert asked.path == "/api/documents" and asked.query["where"] == {"type": "proposal"}
    remote.server.seen.clear()
    remote.server.tables["Document"] = []  # a dataset in no proposal: open data only
    saxs = remote.catalogue.get(PID_PREFIX + "agbh_saxs_0001", ALICE)
    assert saxs.proposal == "" and saxs.is_public(TODAY)
    assert remote.server.seen[-1].path == "/api/datasets/" + quote(saxs.pid, safe="")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"text": "LEAF"}, {"xrf_map_0001", *(f"scan_{i:04d}" for i in range(9))}),
        # x-ray scattering is a parent: SAXS and x-ray powder diffraction are below it.
        (
            {"technique": "x-ray scattering"},
            {"agbh_saxs_0001", *(f"scan_{i:04d}" for i in range(9) if i % 3 != 2)},
        ),
        ({"technique": "PaNET01188"}, {"agbh_saxs_0001", "scan_0000", "scan_0003", "scan_0006"}),
        ({"proposal": "OD2019"}, {"agbh_saxs_0001"}),
        ({"instrument": "id22"}, {"scan_0001", "scan_0004", "scan_0007"}),
        (
            {"text": "scan", "technique": "small angle x-ray scattering", "instrument": "ID02"},
            {"scan_0000", "scan_0003", "scan_0006"},
        ),
        ({"text": "leaf%"}, set()),  # "%" is a wildcard on the Search API: checked again here
        ({"proposal": "IH2002"}, set()),  # exists, but not alice's
    ],
)
def test_search_filters(remote: Remote, filters: dict[str, str], expected: set[str]) -> None:
    assert names(remote.catalogue.search(ALICE, **filters)) == expected


def test_search_limit_and_offset_page_the_readable_results(remote: Remote) -> None:
    everything = [d.pid for d in remote.catalogue.search(ALICE, text="scan")]
    assert len(everything) == 9
    assert [d.pid for d in remote.catalogue.search(ALICE, text="scan", limit=4)] == everything[:4]
    assert [
        d.pid for d in remote.catalogue.search(ALICE, text="scan", limit=4, offset=8)
    ] == everything[8:]


@pytest.mark.parametrize("version", ["v4", "v3"])
@pytest.mark.parametrize("mode", ["service", "user"])
def test_scicat_500_of_5000_in_few_requests(version: str, mode: str) -> None:
    """A user with 500 readable datasets out of 5,000: ceil(500/page) + 1 listing requests."""
    examples = [
        Example(
            f"d{i:05d}",
            "MA1234" if i % 10 == 0 else f"XX{i:04d}",
            "ID21",
            XRF,
            f"Dataset {i}",
            datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=i),
        )
        for i in range(5000)
    ]
    server = scicat_server(examples)
    with server.running() as url:
        catalogue = SciCatCatalogue(
            url=url, api_version=version, auth_mode=mode, page_size=100, cache_ttl=0
        )
        catalogue.service_username, catalogue.service_password = "portal", "pw"
        catalogue.identity(ALICE)  # the token, once per its lifetime: not a listing cost
        server.seen.clear()
        started = time.perf_counter()
        found = catalogue.datasets_for(ALICE)
        elapsed = time.perf_counter() - started
        assert len(found) == 500 and len({d.pid for d in found}) == 500
        assert [d.start_time for d in found] == sorted((d.start_time for d in found), reverse=True)
        assert len(server.seen) <= math.ceil(500 / 100) + 1, [s.query for s in server.seen]
        server.seen.clear()
        assert catalogue.get(found[7].pid, ALICE).pid == found[7].pid
        assert len(server.seen) == 1  # get is one request
    print(f"\nSciCat {version} {mode}: datasets_for 500/5000 in {elapsed * 1000:.0f} ms")


# -- tokens ------------------------------------------------------------------------------


def test_scicat_never_receives_the_umbrella_token(remote: Remote) -> None:
    remote.catalogue.datasets_for(ALICE)
    sent = json.dumps(
        [s.headers for s in remote.server.seen] + [s.body for s in remote.server.seen]
    )
    assert ALICE.access_token not in sent
    if remote.name.endswith("-user"):  # exchanged once for a SciCat token of her own
        (exchange,) = [s for s in remote.server.seen if s.path.endswith("/oidc/token")]
        assert exchange.body == {"idToken": ALICE.id_token}


def test_an_unknown_service_token_is_a_configuration_error_not_an_empty_list() -> None:
    with scicat_server().running() as url:
        catalogue = SciCatCatalogue(url=url, auth_mode="service", service_token="eyJforged")
        with pytest.raises(CatalogueCredentialsRejected, match="answers anonymous") as info:
            catalogue.datasets_for(ALICE)
        assert "SciCatCatalogue.service_token" in str(info.value)


def test_a_user_scicat_refuses_must_sign_in_again() -> None:
    with scicat_server().running() as url:
        catalogue = SciCatCatalogue(url=url)
        stranger = replace(ALICE, id_token="id-token-from-another-client")
        with pytest.raises(CatalogueCredentialsRejected, match="signing out and in again"):
            catalogue.datasets_for(stranger)
        with pytest.raises(CatalogueCredentialsRejected, match="no ID token"):
            catalogue.datasets_for(replace(ALICE, id_token=None))


def test_an_expired_scicat_token_is_renewed(scicat: Remote) -> None:
    scicat.catalogue.cache_ttl = 0
    first = names(scicat.catalogue.datasets_for(ALICE))
    for token in scicat.server.tokens:  # every token SciCat signed expires now
        scicat.server.tokens[token] = (scicat.server.tokens[token][0], 0.0)
    with pytest.raises(CatalogueCredentialsRejected, match="HTTP 401"):
        scicat.catalogue.datasets_for(ALICE)
    time.sleep(1)  # SciCat's token exchange takes one request a second
    assert names(scicat.catalogue.datasets_for(ALICE)) == first  # a new token


def test_the_token_exchange_waits_out_scicats_throttle() -> None:
    with scicat_server().running() as url:
        catalogue = SciCatCatalogue(url=url, backoff=0.01)
        started = time.monotonic()
        assert names(catalogue.datasets_for(ALICE)) and names(catalogue.datasets_for(BOB))
        assert 0.9 < time.monotonic() - started < 5  # bob's exchange waited for Retry-After


# -- timeouts, retries, unreachable servers ----------------------------------------------


def test_a_slow_server_times_out_within_bounds(remote: Remote) -> None:
    remote.catalogue.datasets_for(ALICE)  # tokens acquired
    remote.catalogue.cache_ttl = 0
    remote.server.delay = 1.0
    remote.catalogue.timeout = 0.2
    remote.catalogue.retries = 1
    started = time.monotonic()
    with pytest.raises(CatalogueUnavailable, match=r"no answer within 0\.2 s \(2 attempts\)"):
        remote.catalogue.datasets_for(ALICE)
    assert time.monotonic() - started < 0.9


def test_a_500_is_retried_and_then_named(remote: Remote) -> None:
    remote.server.fail_next = 2
    assert names(remote.catalogue.datasets_for(ALICE)) == alice_sees(remote)
    remote.catalogue.cache_ttl = 0
    remote.server.fail_next = 10
    with pytest.raises(CatalogueUnavailable, match=r"HTTP 500.*\(3 attempts\)") as info:
        remote.catalogue.datasets_for(ALICE)
    assert remote.url in str(info.value)


def test_nonsense_is_a_clear_error_not_an_empty_list(remote: Remote) -> None:
    remote.catalogue.datasets_for(ALICE)
    remote.catalogue.cache_ttl = 0
    records = remote.server.datasets if "scicat" in remote.name else remote.server.tables["Dataset"]
    records[0]["size"] = "twelve gigabytes"
    with pytest.raises(CatalogueUnavailable, match="answered a dataset the portal cannot read"):
        remote.catalogue.datasets_for(ALICE)


def test_retries_stop_at_the_deadline(remote: Remote) -> None:
    remote.server.fail_next = 100
    remote.catalogue.retries = 50
    remote.catalogue.backoff = 0.05
    remote.catalogue.retry_deadline = 0.3
    started = time.monotonic()
    with pytest.raises(CatalogueUnavailable):
        remote.catalogue.datasets_for(ALICE)
    assert time.monotonic() - started < 0.6
    assert len(remote.server.seen) < 6


@pytest.mark.parametrize("cls", [SciCatCatalogue, SearchApiCatalogue])
def test_an_unreachable_server_names_url_and_cause(cls: type[HttpCatalogue]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    catalogue = cls(url=url, retries=1, backoff=0.01)
    with pytest.raises(CatalogueUnavailable) as info:
        catalogue.datasets_for(ALICE)
    message = str(info.value)
    assert message.startswith(f"catalogue {url}/") and "Connection refused" in message


# -- the cache ---------------------------------------------------------------------------


def test_answers_are_cached_per_user(remote: Remote) -> None:
    first = remote.catalogue.datasets_for(ALICE)
    hits = len(remote.server.seen)
    assert remote.catalogue.datasets_for(ALICE) == first
    assert len(remote.server.seen) == hits  # no request at all
    remote.catalogue.datasets_for(BOB)  # another user: asks the server
    assert len(remote.server.seen) > hits


def test_failures_are_not_cached_and_ttl_expires(remote: Remote) -> None:
    remote.catalogue.cache_ttl = 0.05
    remote.catalogue.datasets_for(BOB)  # SciCat tokens acquired, and answers soon expired
    remote.catalogue.datasets_for(ALICE)
    time.sleep(0.06)
    remote.catalogue.cache_ttl = 30
    remote.server.fail_next = 100
    remote.catalogue.retries = 0
    with pytest.raises(CatalogueUnavailable):
        remote.catalogue.datasets_for(ALICE)
    remote.server.fail_next = 0
    assert remote.catalogue.datasets_for(ALICE)
    remote.catalogue.cache_ttl = 0.05
    time.sleep(0.06)
    remote.catalogue.datasets_for(BOB)
    hits = len(remote.server.seen)
    time.sleep(0.06)
    remote.catalogue.datasets_for(BOB)
    assert len(remote.server.seen) > hits


# -- the test servers refuse what the real ones refuse -----------------------------------


def test_the_scicat_server_answers_the_first_versions_queries_as_scicat_does() -> None:
    """What made the portal's first SciCat backend fail against the real server."""
    server = scicat_server([*FACILITY] * 10)  # 150 records, more than one default page
    server.users["portal"] = SciCatUser("portal", "", frozenset({"admin"}), "pw")
    with server.running() as url:
        token = server.issue("portal")
        auth = {"Authorization": f"Bearer {token}"}

        def get(path: str, query: dict, headers: dict | None = None) -> requests.Response:
            params = {"filter": json.dumps(query)}
            return requests.get(url + path, params=params, headers=headers or auth, timeout=5)

        # Top-level paging is ignored: 100 records, unsorted, whatever skip says.
        first = get("/api/v3/Datasets", {"limit": 3, "skip": 0}).json()
        again = get("/api/v3/Datasets", {"limit": 3, "skip": 3}).json()
        assert len(first) == 100 and first == again
        # A like with options is an unknown MongoDB operator: 400.
        where = {"datasetName": {"like": "leaf", "options": "i"}}
        bad = get("/api/v3/Datasets", {"where": where})
        assert bad.status_code == 400 and "unknown operator: options" in bad.text
        # A nested proposalId is not renamed to the stored proposalIds: no match.
        nested = {"and": [{"proposalId": "MA1234"}, {"isPublished": False}]}
        assert get("/api/v3/Datasets", {"where": nested}).json() == []
        assert get("/api/v3/Datasets", {"where": {"proposalId": "MA1234"}}).json()
        # Another identity's bearer token is anonymous, with a 200: public data only.
        umbrella = {"Authorization": "Bearer umbrella-access-alice"}
        public = get("/api/v3/Datasets", {}, umbrella).json()
        assert public and all(r["isPublished"] for r in public)
        assert requests.get(url + "/api/v3/auth/whoami", headers=umbrella, timeout=5).text == ""
        # v4 rejects LoopBack operators and anonymous callers.
        assert get("/api/v4/datasets", {"where": {"pid": {"inq": ["x"]}}}).status_code == 400
        assert get("/api/v4/datasets", {}, umbrella).status_code == 403


def test_the_search_api_server_answers_the_first_versions_queries_as_the_reference() -> None:
    with search_api_server(FACILITY).running() as url:
        api = url + "/api"

        def get(path: str, query: dict) -> requests.Response:
            return requests.get(api + path, params={"filter": json.dumps(query)}, timeout=5)

        documents = get("/datasets", {"include": [{"relation": "documents"}]})
        assert documents.status_code == 500  # the Dataset model has no documents relation
        assert get("/datasets", {"include": "instrument"}).status_code == 500
        # A relation filter drops parents after paging: a short page while more matches follow.
        scoped = {"relation": "techniques", "scope": {"where": {"name": "x-ray fluorescence"}}}
        assert len(get("/datasets", {"include": [scoped], "limit": 3}).json()) < 3
        # A plain pid in a through relation's scope is ignored; inside "and" it holds.
        plain = {"relation": "datasets", "scope": {"where": {"pid": PID_PREFIX + "scan_0001"}}}
        ma1234 = {"pid": "MA1234"}
        (doc,) = get("/documents", {"where": ma1234, "include": [plain]}).json()
        assert len(doc["datasets"]) > 1
        plain["scope"]["where"] = {"and": [{"pid": PID_PREFIX + "scan_0001"}]}
        (doc,) = get("/documents", {"where": ma1234, "include": [plain]}).json()
        assert [d["pid"] for d in doc["datasets"]] == [PID_PREFIX + "scan_0001"]
        # Non-public records are served to anyone: access is the portal's to check.
        assert any(not r["isPublic"] for r in get("/datasets", {}).json())


# -- configuration -----------------------------------------------------------------------

PORTAL_YAML = """\
auth:
  issuer: https://login.example.eu/realms/umbrella
  client_id: portal
catalogue:
  backend: {backend}
{section}
"""


def test_portal_yaml_configures_remote_backends(tmp_path: Path) -> None:
    scicat = settings.parse(
        PORTAL_YAML.format(
            backend="scicat",
            section=textwrap.indent(
                "scicat:\n  url: https://scicat.example.eu/\n  timeout: 5\n"
                "  api_version: v3\n  auth_mode: service\n  service_username: portal\n"
                "  admin_groups: [admin]\n",
                "  ",
            ),
        )
    )
    config = render.render_config(scicat)
    assert config["SciCatCatalogue"] == {
        "url": "https://scicat.example.eu",
        "timeout": 5.0,
        "api_version": "v3",
        "auth_mode": "service",
        "service_username": "portal",
        "admin_groups": ["admin"],
    }
    assert config["PortalCatalogue"]["backend"] == "scicat"

    search = settings.parse(
        PORTAL_YAML.format(
            backend="search-api",
            section=textwrap.indent(
                "search_api:\n  url: https://api.example.eu/api\n"
                "  location_template: /data/{proposal}/{dataset}\n",
                "  ",
            ),
        )
    )
    config = render.render_config(search)
    assert config["SearchApiCatalogue"]["location_template"] == "/data/{proposal}/{dataset}"
    assert catalogue_class(config["PortalCatalogue"]["backend"]) is SearchApiCatalogue


def test_portal_yaml_names_the_missing_or_wrong_remote_section(tmp_path: Path) -> None:
    with pytest.raises(settings.SettingsError) as missing:
        settings.parse(PORTAL_YAML.format(backend="search-api", section=""))
    assert "catalogue: backend 'search-api' needs a 'search_api:' section" in str(missing.value)
    with pytest.raises(settings.SettingsError) as wrong:
        settings.parse(
            PORTAL_YAML.format(
                backend="scicat",
                section=textwrap.indent("scicat:\n  url: https://s.example.eu\n  retry: 3\n", "  "),
            )
        )
    assert "portal.yaml:8: catalogue.scicat: unknown key 'retry'; valid keys here: url," in str(
        wrong.value
    )


def test_search_api_location_never_widens_to_a_root() -> None:
    record = {"pid": "p", "files": [{"id": 1, "name": "a.h5"}]}
    assert (
        SearchApiCatalogue(location_template="/data{files_path}").to_dataset(record).location == ""
    )
    assert SearchApiCatalogue().to_dataset(record).location == ""
    with pytest.raises(TraitError, match=r"unknown placeholder.*use files_path"):
        SearchApiCatalogue(location_template="/data/{beamline}")


def test_http_backends_import_nothing_from_jupyterhub() -> None:
    code = (
        "import sys, portal.catalogue.scicat, portal.catalogue.search_api;"
        " sys.exit('jupyterhub' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_server_that_ignores_paging_is_read_once_not_forever() -> None:
    """A server answering every page with the same records (as SciCat v3 does with a
    top-level skip): the listing stops at the first repeated record."""
    server = search_api_server(FACILITY)
    find = server.find
    server.find = lambda model, query: find(model, {**query, "skip": 0})  # ignores skip
    with server.running() as url:
        catalogue = SearchApiCatalogue(url=url + "/api", page_size=PAGE)
        found = catalogue.datasets_for(ALICE)
    assert len({d.pid for d in found}) == len(found) <= PAGE
    assert len([s for s in server.seen if s.path == "/api/datasets"]) == 2
