"""Provenance records: each session's RO-Crate, written as the user where their results live.

The first tests run the record program (:mod:`spawner.provenance_record`) on a folder, as the
hub runs it in a server, and read the crates back (:func:`spawner.provenance.read_records`).
The end-to-end tests use a real OIDC provider, a real hub started from portal.yaml and the
real Docker engine: a spawn with two datasets, a notebook saved through JupyterLab's contents
API, the stop, and the attacks (symlinks out of the home, a flood of files).
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from portal.demo.sampledata import DEMO_USERS, generate
from spawner import provenance_record
from spawner.environments import load_environments
from spawner.provenance import (
    MAX_CRATE_BYTES,
    Record,
    local_environment,
    program,
    program_arguments,
    read_records,
)
from tests.support.docker_hub import docker_hub
from tests.support.docker_support import engine, portal_containers
from tests.support.portal_client import PortalClient
from tests.support.umbrella import Hub, Provider, demo_provider

XRF = "MA1234/ID21/xrf_map_0001"
CEO2 = "ES1001/ID22/ceo2_powder_0001"
SAXS = "OD2019/ID02/agbh_saxs_0001"  # open data: alice reads it, but is no member


def record_program(action: str, facts: dict) -> dict:
    """Run the record program as the hub does (``python -I -S -c``); its JSON line."""
    argv = [sys.executable, "-I", "-S", "-c", program(), *program_arguments(action, facts)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def facts_for(home: Path, started: float, area: str = "") -> dict:
    crate = f"{area}/provenance/x-lab" if area else "provenance/x-lab"
    return {
        "home": str(home),
        "crate": crate,
        "areas": [area] if area else [],
        "user": "alice",
        "server_name": "lab",
        "server_type": "lab",
        "started": started,
        "environment": "base",
        "image": "panosc/base:0.1.0",
        "digest": "sha256:" + "0" * 64,
        "datasets": [["MA1234/x", "An XRF map"], ["ES1001/y", "CeO2"]],
    }


def test_start_then_stop_records_the_session_and_the_files_saved_in_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    area = "datasets/ES1001/processed"
    (home / area).mkdir(parents=True)
    (home / "datasets/ES1001/ceo2").mkdir()
    (home / "datasets/ES1001/ceo2/reduce.py").write_text("read-only dataset\n")
    (home / "old.py").write_text("before the session\n")
    os.utime(home / "old.py", (1, 1))
    started = time.time() - 1
    record_program("start", facts_for(home, started, area))
    [running] = read_records(home / area)
    assert running.stopped is None and running.files == ()
    assert running.datasets == (("MA1234/x", "An XRF map"), ("ES1001/y", "CeO2"))
    (home / "fit.ipynb").write_text('{"cells": []}\n')
    (home / ".ipynb_checkpoints").mkdir()
    (home / ".ipynb_checkpoints/fit-checkpoint.ipynb").write_text("{}\n")
    (home / area / "reduce.jl").write_text("println(1)\n")
    (home / "notes.txt").write_text("not a script\n")
    record_program("stop", facts_for(home, started, area))
    [record] = read_records(home / area)
    sha = hashlib.sha256(b'{"cells": []}\n').hexdigest()
    assert dict(record.files) == {
        "fit.ipynb": sha,
        f"{area}/reduce.jl": hashlib.sha256(b"println(1)\n").hexdigest(),
    }
    assert record.stopped and record.stopped >= record.started and not record.capped
    crate = json.loads((record.path / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in crate["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    assert graph["./"]["@type"] == "Dataset"
    # a file's @id leads from the crate's folder to the file where the user keeps it
    assert (record.path / "../../../../../fit.ipynb").resolve() == (home / "fit.ipynb").resolve()
    assert {"@id": "../../../../../fit.ipynb"} in graph["#session"]["result"]


def test_a_symlink_out_of_the_home_is_neither_followed_nor_hashed(tmp_path: Path) -> None:
    """Attack: links planted in the home to files outside it (one readable, one not) and to
    a folder outside it; none may appear in the record, nor anything read through them."""
    home = tmp_path / "home"
    home.mkdir()
    outside = tmp_path / "another-user"
    outside.mkdir()
    (outside / "secret.py").write_text("another user's code\n")
    started = time.time() - 1
    (home / "shadow.py").symlink_to("/etc/shadow")
    (home / "theirs.py").symlink_to(outside / "secret.py")
    (home / "theirs").symlink_to(outside, target_is_directory=True)
    (home / "mine.py").write_text("print('mine')\n")
    record_program("stop", facts_for(home, started))
    [record] = read_records(home)
    assert [path for path, _ in record.files] == ["mine.py"]


def test_a_flood_of_files_is_capped(tmp_path: Path) -> None:
    """Attack: more scripts than a record lists; the walk stops and the record says so."""
    home = tmp_path / "home"
    (home / "flood").mkdir(parents=True)
    started = time.time() - 1
    for i in range(provenance_record.MAX_FILES + 50):
        (home / "flood" / f"s{i:05}.py").write_text(f"{i}\n")
    record_program("stop", facts_for(home, started))
    [record] = read_records(home)
    assert len(record.files) == provenance_record.MAX_FILES
    assert record.capped == f"more than {provenance_record.MAX_FILES} files"


def test_the_crate_is_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    """Attack: a fellow member of the proposal replaces ``provenance`` in the shared processed
    area with a link to somewhere else; the record is not written through it."""
    home = tmp_path / "home"
    (home / "datasets/P/processed").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / "datasets/P/processed/provenance").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(subprocess.CalledProcessError):
        record_program("start", facts_for(home, time.time(), "datasets/P/processed"))
    assert list(elsewhere.iterdir()) == []


def test_read_records_skips_what_is_not_a_record_of_ours(tmp_path: Path) -> None:
    """Crates are the user's files: links, huge files, bad JSON and odd shapes are skipped."""
    base = tmp_path / "area" / "provenance"
    good = tmp_path / "home"
    good.mkdir()
    record_program("start", facts_for(good, time.time()))
    [real] = read_records(good)
    crate = (real.path / "ro-crate-metadata.json").read_text()
    for name, text in {
        "bad-json": "{",
        "list": "[]",
        "no-session": '{"@graph": [{"@id": "./"}]}',
        "session-as-text": '{"@graph": [{"@id": "#session", "@type": "CreateAction",'
        ' "startTime": 5, "agent": "x"}]}',
        "huge": " " * (MAX_CRATE_BYTES + 1) + crate,
        "deep": "[" * 100_000,
        "ok": crate,
    }.items():
        (base / name).mkdir(parents=True)
        (base / name / "ro-crate-metadata.json").write_text(text)
    (base / "link").mkdir()
    (base / "link" / "ro-crate-metadata.json").symlink_to(real.path / "ro-crate-metadata.json")
    (base / "dir-link").symlink_to(real.path, target_is_directory=True)
    records = read_records(tmp_path / "area")
    assert [r.path.name for r in records] == ["ok"]
    assert isinstance(records[0], Record) and records[0].user == "alice"
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "provenance").symlink_to(base, target_is_directory=True)
    assert read_records(tmp_path / "linked") == []


def test_the_local_environment_is_named_by_its_python_and_distributions() -> None:
    image, digest, description = local_environment()
    assert image == f"python {sys.version.split()[0]} at {sys.prefix}"
    assert digest.startswith("sha256:") and len(digest) == 71
    assert "distributions" in description


# -- end to end, on the Docker engine ------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("facility") / "data"
    generate(root)
    return root


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    p = demo_provider(tmp_path_factory.mktemp("op"), "alice")
    yield p
    p.stop()


@pytest.fixture(scope="module")
def hub(provider: Provider, data: Path, tmp_path_factory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("hub")
    processed = {"processed_root": str(folder / "processed")}
    images, users = load_environments(), ["alice"]
    with docker_hub(provider, folder, data, images=images, users=users, spawner=processed) as h:
        yield h


@pytest.fixture(scope="module")
def alice(hub: Hub) -> PortalClient:
    client = PortalClient(hub.url)
    client.login(DEMO_USERS["alice"]["sub"])
    return client


def container_of(server: str):
    for c in portal_containers(engine(), "alice"):
        if c.labels["org.panosc.portal.server"] == server:
            return c
    raise AssertionError(f"no container for alice's server {server!r}")


def as_jovyan(container, command: str) -> tuple[int, bytes]:
    code, out = container.exec_run(["sh", "-c", command], user="1000:100", workdir="/home/jovyan")
    return code, out


@pytest.mark.e2e
@pytest.mark.docker
def test_a_docker_session_is_recorded_in_the_processed_area(alice: PortalClient, hub: Hub) -> None:
    before = time.time()
    alice.spawn("prov", {"type": "lab", "datasets": [XRF, CEO2]})
    after = time.time()
    box = container_of("prov")
    area = hub.folder / "processed" / "ES1001"  # alice's first mounted proposal, sorted
    [record] = read_records(area)
    manifest = json.loads(as_jovyan(box, "cat datasets/datasets.json")[1])
    titles = {d["pid"]: d["title"] for d in manifest["datasets"]}
    assert dict(record.datasets) == titles and set(titles) == {XRF, CEO2}
    assert all(titles.values())
    inspect = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", box.attrs["Config"]["Image"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    assert record.digest == (inspect["RepoDigests"] or [inspect["Id"]])[0]
    assert record.image == box.attrs["Config"]["Image"] and record.environment
    started = time.mktime(time.strptime(record.started, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert int(before) <= started <= after
    assert record.user == "alice" and record.server_name == "prov"
    assert record.server_type == "lab" and record.stopped is None
    assert record.path.name.endswith("-prov")
    # the user reads it in their server, and owns it
    inside = f"datasets/ES1001/processed/provenance/{record.path.name}/ro-crate-metadata.json"
    code, text = as_jovyan(box, f"cat {inside} && stat -c %u {inside}")
    assert code == 0 and text.decode().rstrip().endswith("\n1000")

    # during the session: a notebook saved through JupyterLab, a script in the processed
    # area, and links planted to files outside the home
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    r = alice.api(
        "PUT",
        "user/alice/prov/api/contents/analysis.ipynb",
        json={"type": "notebook", "format": "json", "content": notebook},
    )
    assert r.status_code in (200, 201), r.text
    code, out = as_jovyan(
        box,
        "echo 'print(2)' > datasets/ES1001/processed/reduce.py"
        " && ln -sf /etc/shadow shadow.py && ln -sf /etc/passwd passwd.py"
        " && mkdir -p /tmp/outside && echo secret > /tmp/outside/secret.py"
        " && ln -sf /tmp/outside/secret.py theirs.py && ln -sfn /tmp/outside outside-link"
        " && ln -sfn /etc etc-link && mkdir -p .ipynb_checkpoints"
        " && cp analysis.ipynb .ipynb_checkpoints/analysis-checkpoint.ipynb",
    )
    assert code == 0, out
    saved = as_jovyan(box, "cat analysis.ipynb")[1]
    alice.stop("prov")
    [record] = read_records(area)
    assert record.stopped is not None and record.stopped >= record.started
    assert dict(record.files) == {
        "analysis.ipynb": hashlib.sha256(saved).hexdigest(),
        "datasets/ES1001/processed/reduce.py": hashlib.sha256(b"print(2)\n").hexdigest(),
    }
    assert not record.capped


@pytest.mark.e2e
@pytest.mark.docker
def test_a_flood_of_files_in_a_docker_session_is_capped(alice: PortalClient, hub: Hub) -> None:
    """Attack: thousands of scripts in the home; the stop lists at most MAX_FILES, says so,
    and still stops in time."""
    alice.spawn("flood", {"type": "lab", "datasets": [SAXS]})
    box = container_of("flood")
    count = provenance_record.MAX_FILES + 200
    code, out = as_jovyan(box, f"mkdir -p flood && cd flood && seq {count} | xargs touch")
    assert code == 0, out
    code, out = as_jovyan(box, "cd flood && for f in *; do mv $f $f.py; done")
    assert code == 0, out
    stopping = time.monotonic()
    alice.stop("flood")
    assert time.monotonic() - stopping < 60
    # no processed area (alice is no member of OD2019): the record is in her home volume
    assert read_records(hub.folder / "processed" / "OD2019") == []
    alice.spawn("reader", {"type": "lab", "datasets": []})
    reader = container_of("reader")
    # the home volume outlives servers (and test runs): this session's record is the newest
    newest = "ls -d provenance/*-flood | sort | tail -n 1"
    code, out = as_jovyan(reader, f'cat "$({newest})/ro-crate-metadata.json"')
    assert code == 0, out
    graph = {e["@id"]: e for e in json.loads(out)["@graph"]}
    assert len(graph["#session"]["result"]) == provenance_record.MAX_FILES
    assert graph["#session"]["capped"] == f"more than {provenance_record.MAX_FILES} files"
    alice.stop("reader")


@pytest.mark.e2e
@pytest.mark.docker
def test_a_record_that_cannot_be_written_never_blocks_the_stop(alice: PortalClient, hub) -> None:
    """Attack: the user swaps the record's folder for a link to elsewhere while the session
    runs. The record is not written through it, the failure is logged, and the server stops
    as it would have."""
    alice.spawn("swap", {"type": "lab", "datasets": [XRF]})
    box = container_of("swap")
    [record] = [r for r in read_records(hub.folder / "processed" / "MA1234") if r.stopped is None]
    code, out = as_jovyan(
        box,
        "cd datasets/MA1234/processed && mv provenance moved && mkdir -p /tmp/decoy"
        " && ln -s /tmp/decoy provenance && echo 'print(3)' > ~/kept.py",
    )
    assert code == 0, out
    stopping = time.monotonic()
    alice.stop("swap")
    assert time.monotonic() - stopping < 30
    assert "swap" not in [
        c.labels["org.panosc.portal.server"] for c in portal_containers(engine(), "alice")
    ]
    assert "provenance stop not recorded" in hub.log.read_text()
    moved = hub.folder / "processed" / "MA1234" / "moved" / record.path.name
    crate = json.loads((moved / "ro-crate-metadata.json").read_text())
    session = {e["@id"]: e for e in crate["@graph"]}["#session"]
    assert "endTime" not in session  # left as it was, never written through the link


@pytest.mark.e2e
@pytest.mark.docker
def test_a_record_begun_before_a_hub_restart_is_completed_at_stop(alice: PortalClient, hub) -> None:
    """The facts live in the spawner's state: a hub restarted while the server runs (servers
    outlive it on Docker) still completes the record when the server stops."""
    alice.spawn("steady", {"type": "lab", "datasets": [CEO2]})
    hub.stop()
    hub.start()
    deadline = time.monotonic() + 30
    while alice.api("GET", "user/alice/steady/api/status").status_code != 200:
        assert time.monotonic() < deadline, "server not reachable after the hub restarted"
        time.sleep(0.5)
    r = alice.api(
        "PUT",
        "user/alice/steady/api/contents/after-restart.py",
        json={"type": "file", "format": "text", "content": "print(4)\n"},
    )
    assert r.status_code in (200, 201), r.text
    alice.stop("steady")
    [record] = [
        r for r in read_records(hub.folder / "processed" / "ES1001") if r.server_name == "steady"
    ]
    assert record.stopped is not None and record.datasets[0][0] == CEO2
    assert ("after-restart.py", hashlib.sha256(b"print(4)\n").hexdigest()) in record.files


# -- end to end, on the sandboxed local backend (as root, as the demo runs) -----------------


@pytest.fixture(scope="module")
def local_hub(provider: Provider, data: Path, tmp_path_factory) -> Iterator[Hub]:
    folder = tmp_path_factory.mktemp("local-hub")
    h = Hub(
        {
            "auth": {
                "issuer": provider.issuer,
                "client_id": "portal-provenance-local-tests",
                "client_secret": "s",
                "allowed_groups": ["researchers"],
            },
            "catalogue": {"backend": "local", "local": {"data_root": str(data)}},
            "spawner": {
                "backend": "local",
                "processed_root": str(folder / "processed"),
                "home_dir": str(folder / "homes" / "{username}"),
            },
        },
        folder,
    )
    h.start()
    yield h
    h.stop()


@pytest.mark.e2e
def test_a_local_session_is_recorded_by_the_user_in_their_sandbox(local_hub: Hub) -> None:
    alice = PortalClient(local_hub.url)
    alice.login(DEMO_USERS["alice"]["sub"])
    before = time.time()
    alice.spawn("prov", {"type": "lab", "datasets": [XRF, CEO2]})
    area = local_hub.folder / "processed" / "ES1001"
    [record] = read_records(area)
    assert {pid for pid, _ in record.datasets} == {XRF, CEO2}
    assert (record.image, record.digest) == local_environment()[:2]
    started = time.mktime(time.strptime(record.started, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert int(before) <= started <= time.time() and record.stopped is None
    owner = (record.path / "ro-crate-metadata.json").stat().st_uid
    assert owner == pwd.getpwnam("panosc-alice").pw_uid  # written by alice, not the hub
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    r = alice.api(
        "PUT",
        "user/alice/prov/api/contents/analysis.ipynb",
        json={"type": "notebook", "format": "json", "content": notebook},
    )
    assert r.status_code in (200, 201), r.text
    out = alice.run_python(
        "import os\nos.symlink('/etc/passwd', 'passwd.py')\nos.symlink('/etc', 'etc-link')\n"
        "print(open('analysis.ipynb', 'rb').read().hex())",
        server="prov",
    )
    saved = bytes.fromhex(out.strip())
    alice.stop("prov")
    [record] = read_records(area)
    assert record.stopped is not None
    assert dict(record.files) == {"analysis.ipynb": hashlib.sha256(saved).hexdigest()}
