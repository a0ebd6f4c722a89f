"""The spawn form's environment cards: their software versions, written at build, read back.

The versions are written by ``panosc-portal images build`` into each image's label
(``org.panosc.portal.software``), read from the image's own Python. The first half needs no
Docker: the table's ``software`` key, the label's format and its parsing as untrusted input,
the local backend's versions and the cards' content. The second half (marker ``docker``)
reads versions out of a real built image, rebuilds ``base`` (Docker's layer cache makes that
seconds; ``PANOSC_TEST_IMAGES=base`` keeps the session fixture to it) and reads its label
back through the Docker spawner's own client, as the hub does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import docker
import kubernetes_asyncio.config.kube_config as kube_config
import pytest
import yaml
from traitlets.config import Config

from portal import images
from portal.catalogue import Dataset
from spawner.docker import PortalDockerSpawner
from spawner.environments import DATA_FILE, EnvironmentsError, load_environments
from spawner.form import form_context, render_form
from spawner.local import PortalLocalSpawner
from spawner.software import (
    LABEL,
    LabelCache,
    Software,
    docker_software,
    from_label,
    installed,
    label_value,
    software_for,
    software_note,
)
from tests.support.kube import KUBECONFIG, Hubs
from tests.support.paths import ROOT

ENVS = load_environments()
POWDER_XRD = "PaNET01101"  # x-ray powder diffraction
SAXS = "PaNET01188"  # small angle x-ray scattering
NEUTRON_POWDER = "PaNET01100"  # neutron powder diffraction: both diffraction and neutron


def pins(name: str) -> dict[str, str]:
    """``name==version`` lines of images/<name>/requirements.txt, by name."""
    text = (ROOT / "images" / name / "requirements.txt").read_text()
    return dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.MULTILINE))


def dataset(pid: str, *techniques: str) -> Dataset:
    return Dataset(pid, f"title of {pid}", "ES1001", "ID22", f"/data/{pid}", techniques)


# --- The table ----------------------------------------------------------------------------


def test_every_environment_names_its_main_software() -> None:
    assert ENVS["diffraction"].software[:3] == ("pyFAI", "fabio", "sasmodels")
    assert all(env.software for env in ENVS.values())
    # Every name is pinned by the image itself or one it is built FROM: the build reads
    # them from the image and fails on a missing one (see the docker tests below).
    for env in ENVS.values():
        pinned: dict[str, str] = {}
        current: str | None = env.name
        while current is not None:
            pinned |= pins(current)
            current = ENVS[current].parent
        assert set(env.software) <= set(pinned), env.name


@pytest.mark.parametrize(
    ("software", "message"),
    [
        ("pyFAI", r"\(diffraction\)\.software: must be a list, got 'pyFAI'"),
        (["pyFAI", "fabio; rm -rf /"], r"\(diffraction\)\.software: 'fabio; rm -rf /' is not"),
        (["pyFAI", "PyFAI"], r"\(diffraction\)\.software: a name is listed twice"),
    ],
)
def test_bad_software_names_the_entry(tmp_path: Path, software: object, message: str) -> None:
    doc = yaml.safe_load(DATA_FILE.read_text())
    doc["environments"][2]["software"] = software
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(EnvironmentsError, match=message):
        load_environments(path)


def test_software_is_optional(tmp_path: Path) -> None:
    doc = yaml.safe_load(DATA_FILE.read_text())
    del doc["environments"][2]["software"]
    path = tmp_path / "environments.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_environments(path)["diffraction"].software == ()


# --- The label ----------------------------------------------------------------------------


def test_label_round_trip_in_the_tables_order() -> None:
    value = label_value({"pyFAI": "2026.9.0", "fabio": "2026.6.0"})
    assert value == "pyFAI 2026.9.0, fabio 2026.6.0"  # readable in docker image inspect
    assert from_label(value, ("fabio", "sasmodels", "pyFAI")) == (
        Software("fabio", "2026.6.0"),
        Software("sasmodels"),  # the image's label lacks it: shown without a version
        Software("pyFAI", "2026.9.0"),
    )
    assert [str(s) for s in from_label(None, ("silx",))] == ["silx"]


def test_a_label_is_untrusted_input() -> None:
    """An image's labels are anyone's who built it: only the table's names are shown, and
    only with something that looks like a version."""
    hostile = (
        "silx <script>alert(1)</script>, h5py 3.16.0 onerror=x, evil 6.6.6,"
        " scikit_image 0.26.0, PYMCA5 5.9.7, jupyterlab " + "9" * 200
    )
    shown = from_label(hostile, ("silx", "h5py", "scikit-image", "PyMca5", "jupyterlab"))
    assert shown == (
        Software("silx"),
        Software("h5py"),
        Software("scikit-image", "0.26.0"),  # PEP 503: one distribution, spelt as the table does
        Software("PyMca5", "5.9.7"),
        Software("jupyterlab"),
    )


def test_local_backend_versions_are_the_hubs_own() -> None:
    shown = installed(("silx", "no-such-distribution-here", "h5py"))
    assert shown == (
        Software("silx", importlib.metadata.version("silx")),
        Software("h5py", importlib.metadata.version("h5py")),
    )


# --- The cards ----------------------------------------------------------------------------


def test_cards_say_techniques_by_name_and_software_with_versions() -> None:
    software = {"diffraction": (Software("pyFAI", "2026.9.0"), Software("fabio"))}
    context = form_context(
        [dataset("ceo2", POWDER_XRD), dataset("chain", NEUTRON_POWDER), dataset("odd")],
        ENVS,
        ("lab",),
        {},
        software=software,
    )
    cards = {c["name"]: c for c in context["environments"]}
    assert list(cards) == list(ENVS)
    assert "powder diffraction" in cards["diffraction"]["techniques"]
    assert cards["diffraction"]["software"] == ["pyFAI 2026.9.0", "fabio"]
    assert cards["base"]["techniques"] == [] and cards["base"]["software"] == []
    rows = {d["pid"]: d for d in context["groups"]["ES1001"]}
    assert rows["ceo2"]["serves"] == {"diffraction": "x-ray powder diffraction"}
    assert rows["chain"]["serves"] == {
        "diffraction": "neutron powder diffraction",
        "neutron": "neutron powder diffraction",
    }
    assert rows["odd"]["serves"] == {}

    html = render_form(context)
    assert "any technique" in html  # base's card
    assert re.search(r'name="environment"[^>]*value="base"[^>]*checked>', html)
    assert html.count('type="radio" name="environment"') == len(ENVS)


def test_a_hostile_title_or_pid_stays_text_in_the_cards_data() -> None:
    evil = "x'><img src=x onerror=alert(1)>"
    html = render_form(form_context([dataset(evil, SAXS)], ENVS, ("lab",), {}))
    assert "<img" not in html and "onerror=alert(1)>" not in html
    assert """data-serves='{"diffraction": "small angle x-ray scattering"}'""" in html


# --- Docker: written at build, read by the hub ---------------------------------------------


def test_the_hub_shows_no_versions_when_the_engine_is_slow_or_lacks_the_image() -> None:
    """A hung engine costs one form the timeout, then the cache answers at once."""
    calls: list[str] = []
    release = threading.Event()

    def hung(tag: str) -> dict:
        calls.append(tag)
        release.wait(10)
        return {"Config": {"Labels": {LABEL: "pyFAI 1.0"}}}

    async def twice() -> tuple[dict, dict, float]:
        cache = LabelCache()
        envs = {"diffraction": ENVS["diffraction"]}
        started = time.monotonic()
        first = await docker_software(hung, envs, timeout=0.3, cache=cache)
        again = await docker_software(hung, envs, timeout=0.3, cache=cache)
        seconds = time.monotonic() - started
        release.set()  # the engine answers at last, too late for this form
        return first, again, seconds

    first, again, seconds = asyncio.run(twice())
    assert seconds < 2
    unversioned = tuple(Software(n) for n in ENVS["diffraction"].software)
    assert first == again == {"diffraction": unversioned}
    assert calls == [ENVS["diffraction"].image]


@pytest.mark.docker
def test_versions_are_read_from_the_built_image(built_images: dict[str, str]) -> None:
    base = ENVS["base"]
    assert images.installed_versions(base, built_images["base"]) == {
        name: pins("base")[name] for name in base.software
    }
    lacking = replace(base, software=("silx", "pyFAI"))
    with pytest.raises(images.BuildError, match=r"\[base\] .* lists pyFAI as its software, but"):
        images.installed_versions(lacking, built_images["base"])


@pytest.mark.docker
def test_the_build_labels_each_image_and_the_hub_reads_it(
    built_images: dict[str, str], tmp_path: Path
) -> None:
    tag = built_images["base"]
    label = docker.APIClient().inspect_image(tag)["Config"]["Labels"][LABEL]
    expected = {name: pins("base")[name] for name in ENVS["base"].software}
    assert label == label_value(expected)

    # The Docker spawner's form, with an environment whose image this engine does not have.
    doc = yaml.safe_load(DATA_FILE.read_text())
    ghost = {**doc["environments"][0], "name": "ghost", "image": "panosc/ghost:0"}
    table = tmp_path / "environments.yaml"
    table.write_text(yaml.safe_dump({"environments": [doc["environments"][0], ghost]}))
    spawner = PortalDockerSpawner(environments_file=str(table))
    shown = asyncio.run(software_for(spawner))
    assert shown["base"] == tuple(Software(n, v) for n, v in expected.items())
    assert shown["ghost"] == tuple(Software(n) for n in ENVS["base"].software)  # no such image
    assert software_note(spawner) == ""


async def test_kubernetes_cards_name_the_software_without_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub has no engine to ask there, and the nodes' images are not its to see."""
    (tmp_path / "kubeconfig").write_text(KUBECONFIG)  # a cluster that is not there
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    spawner = Hubs(Config()).spawner("alice", "lab", {})
    shown = await software_for(spawner)
    assert shown == {e.name: tuple(Software(n) for n in e.software) for e in ENVS.values()}
    assert software_note(spawner) == ""


def test_local_cards_say_they_list_the_hubs_own_python() -> None:
    spawner = PortalLocalSpawner()
    shown = asyncio.run(software_for(spawner))
    assert shown["diffraction"] == installed(ENVS["diffraction"].software)
    assert "portal's own Python" in software_note(spawner)
