"""The HTTP catalogues (SciCat, PaNOSC Search API) against real HTTP servers, and who sees what.

No SciCat or Search API server can run on these machines: the servers here
(:mod:`tests.catalogue_servers`) are stand-ins that speak each documented protocol on a real
socket, serve payloads shaped like the APIs' own examples, really apply the LoopBack
filters (``where``, ``order``, ``limit``, ``skip``) and check the token. The access matrix runs
over all three backends, the local NeXus index included.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from traitlets import TraitError

from portal import render, settings
from portal.catalogue import (
    Catalogue,
    CatalogueError,
    CatalogueUnavailable,
    CatalogueUser,
    DatasetNotFound,
    catalogue_class,
)
from portal.catalogue.http import CatalogueCredentialsRejected, HttpCatalogue
from portal.catalogue.local import LocalCatalogue
from portal.catalogue.scicat import SciCatCatalogue
from portal.catalogue.search_api import SearchApiCatalogue
from tests.catalogue_servers import (
    PID_PREFIX,
    Example,
    LoopBackServer,
    SciCatServer,
    SearchApiServer,
    scicat_record,
    search_api_record,
)

TODAY = datetime.now(UTC).date()
PAST, FUTURE = date(2021, 1, 1), TODAY + timedelta(days=365)
SAXS, POWDER, XRF, TOMO = "PaNET01188", "PaNET01101", "PaNET01177", "PaNET01207"

ALICE = CatalogueUser(
    "alice", "sub-alice", frozenset({"tomo-team"}), frozenset({"MA1234"}), "tok-alice"
)
BOB = CatalogueUser("bob", "sub-bob", frozenset(), frozenset({"IH2002", "ES1001"}), "tok-bob")
TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def at(day: int) -> datetime:
    return datetime(2024, 3, day, 9, 30, tzinfo=UTC)


# Who may read what, one dataset per case of the access matrix.
MATRIX = {
    "member": Example(
        "xrf_map_0001", "MA1234", "ID21", XRF, "XRF map of a leaf", at(1), acl=("alice",)
    ),
    "non-member": Example(
        "phantom_tomo_0001", "IH2002", "ID19", TOMO, "Phantom tomography", at(2), acl=("bob",)
    ),
    "open data": Example(
        "agbh_saxs_0001", "OD2019", "ID02", SAXS, "AgBh SAXS reference", at(3), public=PAST
    ),
    "embargoed": Example(
        "ceo2_powder_0001",
        "ES1001",
        "ID22",
        POWDER,
        "CeO2 powder",
        at(4),
        public=FUTURE,
        acl=("bob",),
    ),
    "group": Example(
        "team_tomo_0001",
        "IN5678",
        "ID19",
        TOMO,
        "Team tomography",
        at(5),
        groups=("tomo-team",),
        acl=("alice",),
    ),
}
# More of alice's data, so that listings span several pages and filters have work to do.
SCANS = [
    Example(
        f"scan_{i:04d}",
        "MA1234",
        ["ID02", "ID22", "ID21"][i % 3],
        [SAXS, POWDER, XRF][i % 3],
        f"Scan {i} of the leaf",
        at(10 + i),
        acl=("alice",),
    )
    for i in range(9)
]
FACILITY = [*MATRIX.values(), *SCANS]
PAGE = 3  # records per request: every listing needs several pages


def scicat_server() -> SciCatServer:
    groups = {"alice": {"MA1234", "tomo-team"}, "bob": {"IH2002", "ES1001"}}
    return SciCatServer(tokens=TOKENS, datasets=[scicat_record(e) for e in FACILITY], groups=groups)


def search_api_server() -> SearchApiServer:
    return SearchApiServer(tokens=TOKENS, datasets=[search_api_record(e) for e in FACILITY])


SERVERS: dict[str, Callable[[], LoopBackServer]] = {
    "scicat": scicat_server,
    "search-api": search_api_server,
}
CLASSES: dict[str, type[HttpCatalogue]] = {
    "scicat": SciCatCatalogue,
    "search-api": SearchApiCatalogue,
}


@dataclass
class Remote:
    """A running stand-in server and a catalogue client configured for it."""

    server: LoopBackServer
    catalogue: HttpCatalogue
    url: str

    def pages(self) -> list[int]:
        return [s.query.get("skip", 0) for s in self.server.seen]


@pytest.fixture(params=sorted(SERVERS))
def remote(request: pytest.FixtureRequest) -> Iterator[Remote]:
    server = SERVERS[request.param]()
    with server.running() as url:
        catalogue = CLASSES[request.param](
            url=url, page_size=PAGE, timeout=2, retries=2, backoff=0.01
        )
        yield Remote(server, catalogue, url)


# -- the access matrix, for every backend ------------------------------------------------


def local_backend(tmp_path: Path) -> tuple[Catalogue, Callable[[Example], str]]:
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
    return catalogue, lambda e: f"{e.proposal}/{e.instrument}/{e.name}"


@pytest.fixture(params=["local", "scicat", "search-api"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Catalogue, Callable[[Example], str]]]:
    if request.param == "local":
        yield ("local", *local_backend(tmp_path))
        return
    server = SERVERS[request.param]()
    with server.running() as url:
        catalogue = CLASSES[request.param](url=url, page_size=PAGE)
        yield request.param, catalogue, lambda e: PID_PREFIX + e.name


# Group grants: the Search API spec carries no groups, so the portal cannot check one and
# refuses, even though the stand-in server (like a real one) grants it through its ACLs.
EXPECTED = {
    "member": {"local": True, "scicat": True, "search-api": True},
    "non-member": {"local": False, "scicat": False, "search-api": False},
    "open data": {"local": True, "scicat": True, "search-api": True},
    "embargoed": {"local": False, "scicat": False, "search-api": False},
    "group": {"local": True, "scicat": True, "search-api": False},
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_access_matrix(backend: tuple[str, Catalogue, Callable[[Example], str]], case: str) -> None:
    name, catalogue, pid_of = backend
    pid = pid_of(MATRIX[case])
    listed = {d.pid for d in catalogue.datasets_for(ALICE)}
    if EXPECTED[case][name]:
        assert catalogue.get(pid, ALICE).pid == pid
        assert pid in listed
    else:
        with pytest.raises(DatasetNotFound):
            catalogue.get(pid, ALICE)
        assert pid not in listed


def test_embargoed_and_unknown_pids_answer_alike(
    backend: tuple[str, Catalogue, Callable[[Example], str]],
) -> None:
    _, catalogue, pid_of = backend
    embargoed = pid_of(MATRIX["embargoed"])
    unknown = embargoed.replace("ceo2_powder_0001", "no_such_0001")
    answers = []
    for pid in (embargoed, unknown):
        with pytest.raises(CatalogueError) as info:
            catalogue.get(pid, ALICE)
        answers.append((type(info.value), str(info.value).replace(pid, "PID")))
    assert answers[0] == answers[1]
    assert answers[0][0] is DatasetNotFound


def test_members_see_their_embargoed_data_and_datasets_are_mapped(
    backend: tuple[str, Catalogue, Callable[[Example], str]],
) -> None:
    name, catalogue, pid_of = backend
    ceo2 = catalogue.get(pid_of(MATRIX["embargoed"]), BOB)
    assert (ceo2.proposal, ceo2.instrument) == ("ES1001", "ID22")
    assert ceo2.public_date is None or ceo2.public_date > TODAY
    if name != "local":  # the local index reads techniques and times from NeXus files
        assert ceo2.title == "CeO2 powder" and ceo2.techniques == (POWDER,)
        assert ceo2.start_time == at(4)
        assert ceo2.location == MATRIX["embargoed"].storage()
        newest_first = [d.start_time for d in catalogue.datasets_for(ALICE)]
        assert newest_first == sorted(newest_first, reverse=True)


def test_the_portal_filters_even_when_the_backend_does_not(remote: Remote) -> None:
    remote.server.leaky = True  # a backend that returns everything to everyone
    seen = names(remote.catalogue.datasets_for(ALICE))
    assert "phantom_tomo_0001" not in seen and "ceo2_powder_0001" not in seen
    with pytest.raises(DatasetNotFound):
        remote.catalogue.get(PID_PREFIX + "phantom_tomo_0001", ALICE)


# -- paging and filters ------------------------------------------------------------------


def names(datasets: list) -> set[str]:
    return {d.pid.removeprefix(PID_PREFIX) for d in datasets}


def alice_sees(catalogue: HttpCatalogue) -> set[str]:
    """Her proposal's data, open data, and her group's dataset where the API carries groups."""
    mine = {"xrf_map_0001", "agbh_saxs_0001"} | {e.name for e in SCANS}
    return mine | ({"team_tomo_0001"} if isinstance(catalogue, SciCatCatalogue) else set())


def test_listing_pages_through_every_record(remote: Remote) -> None:
    assert names(remote.catalogue.datasets_for(ALICE)) == alice_sees(remote.catalogue)
    # Of its 14 datasets the server shows alice 12: four full pages of 3, then an empty one.
    assert remote.pages() == [0, 3, 6, 9, 12]


def test_a_server_capping_the_page_size_loses_nothing(remote: Remote) -> None:
    remote.server.max_limit = 2  # asked for 3 at a time, it answers 2
    assert names(remote.catalogue.datasets_for(ALICE)) == alice_sees(remote.catalogue)
    assert remote.pages() == [0, 2, 4, 6, 8, 10, 12]


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


# -- the token, timeouts, retries, unreachable servers -----------------------------------


def test_the_users_token_is_forwarded_and_anonymous_sends_none(remote: Remote) -> None:
    remote.catalogue.datasets_for(ALICE)
    header = remote.catalogue.token_header.lower()
    sent = {s.headers.get(header) for s in remote.server.seen}
    expected = "Bearer tok-alice" if isinstance(remote.catalogue, SciCatCatalogue) else "tok-alice"
    assert sent == {expected}

    remote.server.seen.clear()
    anonymous = CatalogueUser("guest")
    assert names(remote.catalogue.datasets_for(anonymous)) == {"agbh_saxs_0001"}
    assert all(header not in s.headers for s in remote.server.seen)


def test_a_refused_token_is_a_clear_error(remote: Remote) -> None:
    stale = CatalogueUser("alice", "sub-alice", access_token="expired")
    with pytest.raises(CatalogueCredentialsRejected, match=r"HTTP 401.*signing out and in") as info:
        remote.catalogue.datasets_for(stale)
    assert str(info.value).startswith(f"catalogue {remote.url}/")


def test_a_slow_server_times_out_within_bounds(remote: Remote) -> None:
    remote.server.delay = 1.0
    remote.catalogue.timeout = 0.2
    remote.catalogue.retries = 1
    started = time.monotonic()
    with pytest.raises(CatalogueUnavailable, match=r"no answer within 0\.2 s \(2 attempts\)"):
        remote.catalogue.datasets_for(ALICE)
    assert time.monotonic() - started < 0.9


def test_a_500_is_retried(remote: Remote) -> None:
    remote.server.fail_next = 2
    assert names(remote.catalogue.datasets_for(ALICE))
    assert remote.pages()[:3] == [0, 0, 0]  # two 500s, then the answer

    remote.catalogue.cache_ttl = 0
    remote.server.fail_next = 10
    with pytest.raises(CatalogueUnavailable, match=r"HTTP 500.*\(3 attempts\)") as info:
        remote.catalogue.datasets_for(ALICE)
    assert remote.url in str(info.value)


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


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cls", [SciCatCatalogue, SearchApiCatalogue])
def test_an_unreachable_server_names_url_and_cause(cls: type[HttpCatalogue]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    catalogue = cls(url=url, retries=1, backoff=0.01)
    with pytest.raises(CatalogueUnavailable) as info:
        catalogue.datasets_for(ALICE)
    message = str(info.value)
    assert message.startswith(f"catalogue {url}/") and "Connection refused" in message


# -- the cache ---------------------------------------------------------------------------


def test_answers_are_cached_per_user_and_token(remote: Remote) -> None:
    first = remote.catalogue.datasets_for(ALICE)
    hits = len(remote.server.seen)
    assert remote.catalogue.datasets_for(ALICE) == first
    assert len(remote.server.seen) == hits  # no request at all

    remote.catalogue.datasets_for(BOB)  # another user: asks the server
    assert len(remote.server.seen) > hits
    hits = len(remote.server.seen)
    renewed = CatalogueUser("alice", "sub-alice", ALICE.groups, ALICE.proposals, "tok-bob")
    remote.catalogue.datasets_for(renewed)  # same user, other token: asks again
    assert len(remote.server.seen) > hits


def test_failures_are_not_cached_and_ttl_expires(remote: Remote) -> None:
    remote.server.fail_next = 100
    remote.catalogue.retries = 0
    with pytest.raises(CatalogueUnavailable):
        remote.catalogue.datasets_for(ALICE)
    remote.server.fail_next = 0
    assert remote.catalogue.datasets_for(ALICE)

    remote.catalogue.cache_ttl = 0.05
    remote.catalogue.datasets_for(BOB)
    hits = len(remote.server.seen)
    time.sleep(0.06)
    remote.catalogue.datasets_for(BOB)
    assert len(remote.server.seen) > hits


# -- backend specifics -------------------------------------------------------------------


def test_scicat_sends_one_loopback_filter_per_page() -> None:
    server = scicat_server()
    with server.running() as url:
        SciCatCatalogue(url=url, page_size=50).search(
            ALICE, text="a.b", technique="x-ray scattering", proposal="MA1234"
        )
    (query,) = [s.query for s in server.seen]
    assert query["order"] == ["creationTime DESC", "pid ASC"] and query["limit"] == 50
    text, technique, proposal = query["where"]["and"]
    assert text["or"][0] == {"datasetName": {"like": r"a\.b", "options": "i"}}
    assert "PaNET01188" in technique["techniques.pid"]["inq"]
    assert "http://purl.org/pan-science/PaNET/PaNET01188" in technique["techniques.pid"]["inq"]
    assert proposal == {"proposalId": "MA1234"}


def test_scicat_maps_groups_publication_and_unknown_techniques() -> None:
    record = scicat_record(MATRIX["group"]) | {
        "techniques": [{"pid": "PaNET99999", "name": "brand new"}, {"pid": TOMO}],
        "datasetName": None,
    }
    dataset = SciCatCatalogue().to_dataset(record)
    assert dataset.access_groups == {"IN5678", "tomo-team"}
    assert dataset.techniques == ("PaNET99999", TOMO)
    assert dataset.title == dataset.pid and dataset.public_date is None
    assert dataset.size == 1_048_576 and dataset.file_count == 3


def test_search_api_location_from_a_template_needs_no_file_listing() -> None:
    server = search_api_server()
    template = "/data/visitor/{proposal}/{instrument}/{dataset}"
    with server.running() as url:
        catalogue = SearchApiCatalogue(url=url, location_template=template)
        xrf = catalogue.get(PID_PREFIX + "xrf_map_0001", ALICE)
    assert xrf.location == "/data/visitor/MA1234/ID21/xrf_map_0001"
    assert {"relation": "files"} not in server.seen[0].query["include"]
    assert server.seen[0].path == "/datasets/20.500.12269%2Fxrf_map_0001"


def test_search_api_location_never_widens_to_a_root() -> None:
    record = search_api_record(MATRIX["member"]) | {"files": [{"id": 1, "name": "a.h5"}]}
    assert (
        SearchApiCatalogue(location_template="/data{files_path}").to_dataset(record).location == ""
    )
    assert SearchApiCatalogue().to_dataset(record).location == ""
    with pytest.raises(TraitError, match=r"unknown placeholder.*use files_path"):
        SearchApiCatalogue(location_template="/data/{beamline}")


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
                "scicat:\n  url: https://scicat.example.eu/\n  timeout: 5\n  token_scheme: ''\n",
                "  ",
            ),
        )
    )
    config = render.render_config(scicat)
    assert config["SciCatCatalogue"] == {
        "url": "https://scicat.example.eu",
        "timeout": 5.0,
        "token_scheme": "",
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


def test_http_backends_import_nothing_from_jupyterhub() -> None:
    code = (
        "import sys, portal.catalogue.scicat, portal.catalogue.search_api;"
        " sys.exit('jupyterhub' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
