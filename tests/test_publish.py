"""Publishing results: every refusal first (the attacks were written before the checks),
then the SciCat request against the rebuilt SciCat server, which validates it as SciCat's
DTOs do, and refuses what real SciCat refuses."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.catalogue import CatalogueUnavailable
from portal.catalogue.scicat import SciCatCatalogue
from portal.publish import (
    PublishRefused,
    list_folders,
    prepare,
    publish_scicat,
    refuse_read_only,
    scicat_derived,
)
from tests.support.catalogue_examples import ALICE, BOB, MATRIX, TRUST, scicat_server
from tests.support.fake_scicat import SciCatServer, derived_problems
from tests.support.records import write_record

INPUT = MATRIX["member"]  # MA1234's XRF map: alice may read it
EMBARGOED = MATRIX["non-member"]  # IH2002: alice may not


def record(area: Path, datasets: list, server: str = "lab-1") -> str:
    """A record of a session in the xrf environment built as ``panosc/xrf:latest``."""
    return write_record(area, datasets, server=server, image="panosc/xrf:latest")


@pytest.fixture
def scicat() -> Iterator[tuple[SciCatServer, SciCatCatalogue]]:
    server = scicat_server()
    with server.running() as url:
        yield server, SciCatCatalogue(url=url, trusted_writers=TRUST, backoff=0.01)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A processed root with MA1234's area: a results folder and one record."""
    area = tmp_path / "processed" / "MA1234"
    (area / "results" / "fit-1").mkdir(parents=True)
    (area / "results" / "fit-1" / "peaks.csv").write_text("energy,counts\n1,2\n")
    (area / "results" / "empty").mkdir()
    return tmp_path / "processed"


def ask(catalogue, root: Path, **given):
    form = {
        "proposal": "MA1234",
        "folder": "results/fit-1",
        "records": [],
        "title": "Fitted peaks",
        "description": "Peaks of the XRF map.",
    }
    form.update(given)
    return prepare(catalogue, ALICE, str(root), **form)


# -- refusals ---------------------------------------------------------------------------


def test_symlink_escape_is_refused(scicat, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "data.h5").write_text("not yours")
    os.symlink(secret, root / "MA1234" / "results" / "link")
    name = record(root / "MA1234", [INPUT])
    with pytest.raises(PublishRefused, match="symbolic link") as e:
        ask(scicat[1], root, folder="results/link", records=[name])
    assert e.value.field == "folder"


def test_symlinked_area_component_is_refused(scicat, root: Path, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    os.symlink(tmp_path / "other", root / "MA1234" / "out")
    with pytest.raises(PublishRefused, match="symbolic link"):
        ask(scicat[1], root, folder="out")


@pytest.mark.parametrize("folder", ["../IH2002/results", "results/../../IH2002", ".."])
def test_dot_dot_is_refused(scicat, root: Path, folder: str) -> None:
    (root / "IH2002" / "results").mkdir(parents=True)
    (root / "IH2002" / "results" / "x.txt").write_text("x")
    with pytest.raises(PublishRefused, match=r"'\.\.'") as e:
        ask(scicat[1], root, folder=folder)
    assert e.value.field == "folder"


def test_absolute_path_is_refused(scicat, root: Path) -> None:
    with pytest.raises(PublishRefused, match="absolute"):
        ask(scicat[1], root, folder=str(root / "MA1234" / "results" / "fit-1"))


def test_non_member_is_refused(scicat, root: Path) -> None:
    (root / "IH2002" / "r").mkdir(parents=True)
    (root / "IH2002" / "r" / "x.txt").write_text("x")
    with pytest.raises(PublishRefused, match="not a member") as e:
        ask(scicat[1], root, proposal="IH2002", folder="r")
    assert e.value.field == "proposal"


def test_empty_folder_is_refused(scicat, root: Path) -> None:
    name = record(root / "MA1234", [INPUT])
    with pytest.raises(PublishRefused, match="empty") as e:
        ask(scicat[1], root, folder="results/empty", records=[name])
    assert e.value.field == "folder"


def test_the_area_itself_and_missing_folders_are_refused(scicat, root: Path) -> None:
    with pytest.raises(PublishRefused, match="inside the processed area"):
        ask(scicat[1], root, folder="")
    with pytest.raises(PublishRefused, match="does not exist"):
        ask(scicat[1], root, folder="results/nope")


def test_a_record_naming_data_the_user_may_not_read_is_refused(scicat, root: Path) -> None:
    """A record is a file in a shared area: any member could have planted one."""
    name = record(root / "MA1234", [INPUT, EMBARGOED])
    with pytest.raises(PublishRefused, match=EMBARGOED.pid) as e:
        ask(scicat[1], root, records=[name])
    assert e.value.field == "records"


def test_unknown_or_no_record_is_refused(scicat, root: Path) -> None:
    with pytest.raises(PublishRefused, match="not in this processed area"):
        ask(scicat[1], root, records=["../../etc"])
    with pytest.raises(PublishRefused, match="pick the session"):
        ask(scicat[1], root, records=[])


def test_search_api_is_read_only() -> None:
    with pytest.raises(PublishRefused, match="read-only"):
        refuse_read_only("search-api")


def test_form_folders_list_no_links_nor_records(root: Path, tmp_path: Path) -> None:
    record(root / "MA1234", [INPUT])
    os.symlink(tmp_path, root / "MA1234" / "results" / "link")
    assert list_folders(root / "MA1234") == ["results", "results/empty", "results/fit-1"]


# -- SciCat -----------------------------------------------------------------------------


def test_scicat_derived_dataset_is_accepted_and_linked(scicat, root: Path) -> None:
    server, catalogue = scicat
    name = record(root / "MA1234", [INPUT])
    publication = ask(catalogue, root, records=[name])
    created = publish_scicat(catalogue, publication, "/gpfs/processed/MA1234/results/fit-1")
    posted = [s for s in server.seen if s.method == "POST" and s.path == "/api/v3/Datasets"]
    assert len(posted) == 1
    body = posted[0].body
    assert derived_problems(body) == []
    assert body["type"] == "derived"
    assert body["inputDatasets"] == [INPUT.pid]
    assert body["usedSoftware"] == ["xrf panosc/xrf:latest@sha256:" + "ab" * 32]
    assert body["ownerGroup"] == "MA1234"
    assert body["numberOfFiles"] == 1 and body["size"] == len("energy,counts\n1,2\n")
    assert body["jobParameters"]["provenance"] == [name]
    assert created["pid"] and created["createdBy"] == "alice"
    # alice reads it back through the portal; bob (not in MA1234) does not
    assert catalogue.get(created["pid"], ALICE).title == "Fitted peaks"


def test_fake_scicat_refuses_what_scicat_refuses(scicat, root: Path) -> None:
    _, catalogue = scicat
    name = record(root / "MA1234", [INPUT])
    good = scicat_derived(ask(catalogue, root, records=[name]), "/gpfs/processed/MA1234/r")
    assert derived_problems(good) == []
    bad = [
        ({k: v for k, v in good.items() if k != "investigator"}, "investigator"),
        ({**good, "contactEmail": ""}, "contactEmail"),
        ({**good, "inputDatasets": "one"}, "inputDatasets"),
        ({**good, "usedSoftware": [1]}, "usedSoftware"),
        ({**good, "jobParameters": []}, "jobParameters"),
        ({**good, "sourceFolder": " "}, "sourceFolder"),
        ({**good, "creationTime": "yesterday"}, "creationTime"),
        ({**good, "size": 1.5}, "size"),
        ({**good, "files": []}, "files"),
    ]
    for body, field in bad:
        assert any(field in p for p in derived_problems(body)), field
    # over the wire: a 400, and the portal's error carries SciCat's message
    session = catalogue._session()
    url = catalogue.endpoint("/api/v3/Datasets")
    headers = catalogue.auth_headers(ALICE)
    answer = session.post(url, json={**good, "files": []}, headers=headers)
    assert answer.status_code == 400 and "files" in answer.text
    # a group the caller is not in is a 403, anonymous too
    assert (
        session.post(url, json={**good, "ownerGroup": "IH2002"}, headers=headers).status_code == 403
    )
    assert session.post(url, json=good).status_code == 403


def test_scicat_needs_a_contact_email(scicat, root: Path) -> None:
    from dataclasses import replace

    _, catalogue = scicat
    name = record(root / "MA1234", [INPUT])
    publication = replace(ask(catalogue, root, records=[name]), user=replace(ALICE, email=""))
    with pytest.raises(PublishRefused, match="e-mail"):
        publish_scicat(catalogue, publication, "/x")
    assert BOB.email  # bob is the non-member of MA1234 in these tests


# -- local catalogue --------------------------------------------------------------------


def test_local_publish_is_a_dataset_of_the_proposal_embargoed_like_its_inputs(
    tmp_path: Path, root: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    import yaml

    from portal.catalogue import DatasetNotFound
    from portal.catalogue.local import LocalCatalogue
    from portal.publish import publish_local

    data = tmp_path / "data"
    raw = data / "MA1234" / "ID21" / "xrf_map_0001"
    raw.mkdir(parents=True)
    (raw / "notes.txt").write_text("raw")
    later = (datetime.now(UTC) + timedelta(days=30)).date()
    proposals = {
        "proposals": {
            "MA1234": {"members": ["alice"], "public_date": "2020-01-01"},
            "ES1001": {"members": ["alice"], "public_date": later.isoformat()},
        }
    }
    (data / "proposals.yaml").write_text(yaml.safe_dump(proposals))
    other = data / "ES1001" / "ID22" / "ceo2"
    other.mkdir(parents=True)
    (other / "x.txt").write_text("x")
    catalogue = LocalCatalogue(data_root=str(data), index_workers=1, thumbnails=False)
    catalogue.index()
    inputs = [
        catalogue.get("MA1234/ID21/xrf_map_0001", ALICE),
        catalogue.get("ES1001/ID22/ceo2", ALICE),
    ]
    name = record(root / "MA1234", inputs)
    publication = prepare(
        catalogue,
        ALICE,
        str(root),
        proposal="MA1234",
        folder="results/fit-1",
        records=[name],
        title="Fitted peaks",
        description="Peaks of the XRF map.",
    )
    pid = publish_local(catalogue, publication)
    found = catalogue.get(pid, ALICE)
    assert found.title == "Fitted peaks" and found.proposal == "MA1234"
    assert found.inputs == ("MA1234/ID21/xrf_map_0001", "ES1001/ID22/ceo2")
    assert found.software == ("xrf panosc/xrf:latest@sha256:" + "ab" * 32,)
    # MA1234 is open data, but one input (ES1001) is embargoed: so is the derived dataset
    assert found.public_date == later
    with pytest.raises(DatasetNotFound):
        catalogue.get(pid, BOB)
    assert [d.pid for d in catalogue.search(BOB, text="Fitted")] == []  # open proposal or not
    # the results stay where they were; the tree holds a copy beside the portal's description
    assert (root / "MA1234" / "results" / "fit-1" / "peaks.csv").exists()
    assert sorted(p.name for p in (data / pid).iterdir()) == ["derived.json", "peaks.csv"]
    assert (found.file_count, found.size) == (1, len("energy,counts\n1,2\n"))


# -- end to end: a real hub with the local catalogue, a real provider, Chromium ----------

XRF = "MA1234/ID21/xrf_map_0001"  # alice's (MA1234), embargoed: bob may not read it


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    import shutil

    from portal.demo.sampledata import generate
    from tests.support.umbrella import demo_provider, local_hub

    folder = tmp_path_factory.mktemp("publish")
    data = folder / "data"
    generate(data)
    processed = folder / "processed"
    area = processed / "MA1234"
    (area / "results" / "fit-1").mkdir(parents=True)
    (area / "results" / "fit-1" / "peaks.csv").write_text("energy,counts\n1,2\n")
    (area / "results" / "empty").mkdir()
    provider = demo_provider(folder, "alice", "bob")
    h = local_hub(provider, folder, data, spawner={"processed_root": str(processed)})
    h.provider = provider
    h.area = area
    h.start()
    yield h
    h.stop()
    provider.stop()
    shutil.rmtree(data, ignore_errors=True)


def client(hub, who: str):
    from portal.demo.sampledata import DEMO_USERS
    from tests.support.portal_client import PortalClient

    c = PortalClient(hub.url)
    assert c.login(DEMO_USERS[who]["sub"]).status_code == 200
    return c


def post(c, **form):
    data = {"_xsrf": c.http.cookies.get("_xsrf", path="/hub/") or "", **form}
    return c.http.post(f"{c.hub_url}/hub/publish", data=data, timeout=60, allow_redirects=False)


@pytest.mark.e2e
def test_publish_on_the_local_catalogue_end_to_end(hub) -> None:
    from portal.catalogue.model import Dataset

    xrf = Dataset(XRF, "XRF map", "MA1234", "ID21", "")
    name = record(hub.area, [xrf])
    alice, bob = client(hub, "alice"), client(hub, "bob")
    form = alice.click("/hub/publish?proposal=MA1234")
    assert form.status_code == 200
    html = form.content.decode()
    assert 'value="results/fit-1"' in html and name in html
    # refusals, each on the form and naming the field
    for fields, message in [
        ({"folder": "../../data/MA1234"}, "&#39;..&#39;"),
        ({"folder": "/etc"}, "absolute"),
        ({"folder": "results/empty"}, "is empty"),
        ({"proposal": "IH2002", "folder": "results/fit-1"}, "not a member"),
    ]:
        answer = post(
            alice,
            **{"proposal": "MA1234", "records": name, "title": "t", "description": "", **fields},
        )
        assert answer.status_code == 400 and message in answer.text, (fields, answer.text[-800:])
    # no xsrf: refused by the hub
    bare = alice.http.post(
        f"{alice.hub_url}/hub/publish", data={"proposal": "MA1234"}, allow_redirects=False
    )
    assert bare.status_code == 403
    done = post(
        alice,
        proposal="MA1234",
        folder="results/fit-1",
        records=name,
        title="Fitted peaks",
        description="Peaks of the XRF map.",
    )
    assert done.status_code == 302, done.text[-800:]
    path = done.headers["Location"]
    assert path.startswith("/hub/datasets/MA1234/derived/fitted-peaks-")
    page = alice.click(path)
    assert page.status_code == 200
    assert "Fitted peaks" in page.text and f'href="/hub/datasets/{XRF}"' in page.text
    assert "panosc/xrf:latest@sha256:" in page.text
    listed = alice.click("/hub/datasets?q=Fitted").text
    assert path.removeprefix("/hub/datasets/") in listed
    # bob is not a member of MA1234 and its inputs are embargoed: as for an unknown pid
    assert bob.click(path).status_code == 404
    assert path.removeprefix("/hub/datasets/") not in bob.click("/hub/datasets?q=Fitted").text
    assert (hub.area / "results" / "fit-1" / "peaks.csv").exists()  # nothing moved


@pytest.mark.e2e
def test_members_open_published_results_read_only(hub) -> None:
    """Open mounts the published copy of the results, read-only, with the inputs beside
    them; bob (no member, inputs embargoed) can neither start a server with it nor open it."""
    import re

    from portal.catalogue.model import Dataset

    name = record(hub.area, [Dataset(XRF, "XRF map", "MA1234", "ID21", "")], server="lab-open")
    alice, bob = client(hub, "alice"), client(hub, "bob")
    done = post(
        alice,
        proposal="MA1234",
        folder="results/fit-1",
        records=name,
        title="Peaks to open",
        description="",
    )
    assert done.status_code == 302, done.text[-800:]
    pid = done.headers["Location"].removeprefix("/hub/datasets/")
    page = alice.click(f"/hub/datasets/{pid}").text
    assert re.search(r"Files</dt><dd[^>]*>1</dd>", page), "the page counts the results' files"
    alice.spawn("derived", {"type": "lab", "datasets": [pid]})
    try:
        out = alice.run_python(
            "import json, os\n"
            "listed = json.load(open('datasets/datasets.json'))['datasets']\n"
            f"[folder] = [d['path'] for d in listed if d['pid'] == {pid!r}]\n"
            "print(sorted(os.listdir(folder)))\n"
            "print(open(folder + '/peaks.csv').read().splitlines())\n"
            "print(json.load(open(folder + '/derived.json'))['inputs'])\n"
            "for target in ('peaks.csv', 'new.txt'):\n"
            "    try:\n"
            "        open(os.path.join(folder, target), 'a').write('x')\n"
            "        print('written', target)\n"
            "    except OSError as e:\n"
            "        print('refused', target, e.errno)\n",
            server="derived",
        )
    finally:
        alice.stop("derived")
    assert out.splitlines() == [
        "['derived.json', 'peaks.csv']",
        "['energy,counts', '1,2']",
        f"['{XRF}']",
        "refused peaks.csv 13",  # EACCES: the copy is read-only (0444, the hub's)
        "refused new.txt 30",  # EROFS: and so is the mount
    ]
    refused = bob.api("POST", "hub/api/users/bob/servers/peek", json={"datasets": [pid]})
    assert refused.status_code == 403 and "was not found" in refused.json()["message"]
    assert bob.click(f"/hub/datasets/{pid}").status_code == 404


@pytest.mark.e2e
def test_publish_through_the_form_in_the_browser(hub, browser, artifacts: Path) -> None:
    import shutil

    from portal.catalogue.model import Dataset
    from portal.demo.sampledata import DEMO_USERS
    from tests.support.accessibility import assert_accessible

    xrf = Dataset(XRF, "XRF map", "MA1234", "ID21", "")
    name = record(hub.area, [xrf], server="lab-xrf")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/oauth_login?next=/hub/home")
    page.fill("input[name='sub']", DEMO_USERS["alice"]["sub"])  # the provider's own page
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url("**/hub/home")
    page.get_by_role("link", name="Publish results").click()
    page.wait_for_url("**/hub/publish")
    page.select_option("#folder", "results/fit-1")
    page.check(f"input[value='{name}']")
    page.fill("#title", "Elemental maps of the leaf")
    page.fill("#description", "Fe and Zn maps fitted from the XRF map, normalised by I0.")
    assert_accessible(page)
    page.screenshot(path=artifacts / "publish.png", full_page=True)
    shutil.copy(artifacts / "publish.png", Path(__file__).parents[1] / "docs/images/publish.png")
    page.click("#publish")
    page.wait_for_url("**/hub/datasets/MA1234/derived/**")
    assert page.locator("h1").inner_text() == "Elemental maps of the leaf"
    assert page.locator(f"#panosc-inputs a[href='/hub/datasets/{XRF}']").count() == 1
    page.screenshot(path=artifacts / "publish-dataset.png", full_page=True)
    assert_accessible(page)
    page.close()


def test_a_failed_registration_is_never_sent_twice(scicat, root: Path) -> None:
    """A POST that SciCat answered with a 5xx may have created the dataset before failing:
    sending it again could register the results twice. It is sent once, and the user is
    told to look before publishing again."""
    server, catalogue = scicat
    publication = ask(catalogue, root, records=[record(root / "MA1234", [INPUT])])
    server.fail_next = 1
    with pytest.raises(CatalogueUnavailable) as failed:
        publish_scicat(catalogue, publication, "/gpfs/processed/MA1234/results/fit-1")
    posted = [s for s in server.seen if s.method == "POST" and s.path == "/api/v3/Datasets"]
    assert len(posted) == 1
    assert "may have been registered" in str(failed.value)
    assert "search the catalogue for 'Fitted peaks' before publishing again" in str(failed.value)
