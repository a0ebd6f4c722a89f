"""Server options: the allow-lists, the environment chosen by technique, and the spawn form."""

from __future__ import annotations

import re

import pytest

from portal.catalogue import Dataset
from spawner.environments import load_environments
from spawner.form import form_context, render_form, served_by
from spawner.options import ServerOptions, SpawnRefused, parse_options, pick_environment

ENVS = load_environments()
PRESETS = {"small": {"cpu": 1, "memory": "2G"}}


def dataset(pid: str, *techniques: str, title: str = "", proposal: str = "MA1234") -> Dataset:
    return Dataset(pid, title or pid, proposal, "ID21", f"/data/{pid}", techniques=techniques)


def test_defaults_and_round_trip() -> None:
    options = parse_options({}, ENVS, PRESETS)
    assert options == ServerOptions("lab", None, None, "default")
    raw = {"type": "desktop", "environment": "desktop", "datasets": ["a", "a", "b"]}
    parsed = parse_options(raw, ENVS, PRESETS)
    assert parsed.datasets == ("a", "b")
    assert parse_options(parsed.as_user_options(), ENVS, PRESETS) == parsed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"image": "evil/image:latest"}, "unknown server option(s) image"),
        ({"type": "root-shell"}, "unknown server type 'root-shell'"),
        ({"environment": "mining"}, "unknown environment 'mining'; available: base"),
        ({"type": "desktop", "environment": "xrf"}, "environment 'xrf' offers no desktop"),
        ({"resources": "huge"}, "unknown resource preset 'huge'; choose one of default, small"),
        ({"datasets": [1, 2]}, "must be a list of dataset pids"),
        ({"type": ["lab", "desktop"]}, "must be a single string"),
    ],
)
def test_refusals_name_what_is_wrong(raw: dict, message: str) -> None:
    with pytest.raises(SpawnRefused) as info:
        parse_options(raw, ENVS, PRESETS)
    assert message in info.value.message and info.value.status_code == 400


def test_environment_follows_the_datasets_techniques() -> None:
    saxs, xrf, tomo = "PaNET01188", "PaNET01288", "PaNET01207"
    assert pick_environment([dataset("a", saxs)], ENVS, "lab").name == "diffraction"
    assert pick_environment([dataset("a", xrf)], ENVS, "lab").name == "xrf"
    two_tomo = [dataset("a", tomo), dataset("b", tomo), dataset("c", xrf)]
    assert pick_environment(two_tomo, ENVS, "lab").name == "tomography"
    assert pick_environment([dataset("a")], ENVS, "lab").name == "base"  # no technique
    assert pick_environment([dataset("a", saxs)], ENVS, "desktop").name == "desktop"


@pytest.mark.parametrize("technique", ["PaNET01196", "PaNET01198", "PaNET01199"])
def test_an_xas_dataset_opens_in_spectroscopy_not_in_all_of_x_ray_spectroscopy(
    technique: str,
) -> None:
    """xrf serves x-ray spectroscopy (PaNET01156), a term above XAS, EXAFS and XANES;
    spectroscopy serves XAS itself: the closer term wins, in the server and in the form."""
    xas = dataset("a", technique)
    assert ENVS["xrf"].serves(technique) and ENVS["spectroscopy"].serves(technique)
    assert pick_environment([xas], ENVS, "lab").name == "spectroscopy"
    assert list(served_by(xas, ENVS)) == ["spectroscopy"]
    xrf_spectroscopy = dataset("b", "PaNET01156")
    assert pick_environment([xrf_spectroscopy], ENVS, "lab").name == "xrf"


def test_simulation_is_offered_with_any_data_and_never_the_default() -> None:
    assert not ENVS["simulation"].techniques
    for technique in ("PaNET01188", "PaNET01164", "PaNET01196"):
        for server_type in ("lab", "desktop"):
            chosen = pick_environment([dataset("a", technique)], ENVS, server_type)
            assert chosen.name != "simulation"
    assert pick_environment([], ENVS, "desktop").name == "desktop"


def test_form_escapes_catalogue_strings_and_groups_by_proposal() -> None:
    evil = '<script>alert("x")</script>'
    datasets = [
        dataset("MA1234/ID21/a", "PaNET01288", title=evil),
        *(
            dataset(f"ES{p}/ID22/d{i}", "PaNET01101", proposal=f"ES{p}")
            for p in range(20)
            for i in range(15)
        ),
    ]
    html = render_form(
        form_context(datasets, ENVS, ("lab",), PRESETS, frozenset({"MA1234/ID21/a"}))
    )
    assert evil not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert html.count('class="panosc-proposal"') == 21
    assert html.count('name="datasets"') == 301
    assert 'value="desktop"' in html and "disabled" in html  # not on the local backend
    assert re.search(r'name="environment"[^>]*value="xrf"[^>]*checked>', html)  # it is XRF
