"""The PaNET subset in panet.yaml and the lookups the catalogue search relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from portal.catalogue import techniques
from portal.catalogue.techniques import Technique

# Ids as PaNET defines them (checked against the ontology's source/PaNET.csv).
XRAY_SCATTERING = "PaNET01184"
XRAY_DIFFRACTION = "PaNET01216"
SAXS = "PaNET01188"
WAXS = "PaNET01191"
SANS = "PaNET01189"
SMALL_ANGLE_SCATTERING = "PaNET01124"
POWDER_DIFFRACTION = "PaNET01030"
XRAY_POWDER_DIFFRACTION = "PaNET01101"
NEUTRON_POWDER_DIFFRACTION = "PaNET01100"
XRF = "PaNET01177"
XAS = "PaNET01196"
XANES = "PaNET01199"
EXAFS = "PaNET01198"
TOMOGRAPHY = "PaNET01129"
XRAY_TOMOGRAPHY = "PaNET01207"
MX = "PaNET01164"
INELASTIC_SCATTERING = "PaNET01034"
INS = "PaNET01245"
IXS = "PaNET01182"
TOF_SPECTROMETRY = "PaNET01244"
NEUTRON_TOF = "PaNET01001"
NEUTRON_SCATTERING = "PaNET01242"
NEUTRON_DIFFRACTION = "PaNET01217"
XRAY_PROBE = "PaNET01012"


def test_xray_scattering_finds_saxs_waxs_and_powder_diffraction() -> None:
    found = techniques.descendants(XRAY_SCATTERING)
    assert {XRAY_SCATTERING, SAXS, WAXS, XRAY_DIFFRACTION, XRAY_POWDER_DIFFRACTION} <= found
    assert SANS not in found
    assert NEUTRON_POWDER_DIFFRACTION not in found


def test_broader_queries_find_both_probes() -> None:
    assert {SAXS, SANS} <= techniques.descendants(SMALL_ANGLE_SCATTERING)
    assert {XRAY_POWDER_DIFFRACTION, NEUTRON_POWDER_DIFFRACTION} <= techniques.descendants(
        POWDER_DIFFRACTION
    )
    assert {NEUTRON_DIFFRACTION, NEUTRON_POWDER_DIFFRACTION, SANS, INS} <= techniques.descendants(
        NEUTRON_SCATTERING
    )
    assert {XAS, XANES, EXAFS, SAXS, XRAY_TOMOGRAPHY} <= techniques.descendants(XRAY_PROBE)
    assert {XRAY_TOMOGRAPHY, "PaNET01208"} <= techniques.descendants(TOMOGRAPHY)


def test_descendants_and_ancestors_mirror_each_other() -> None:
    every = techniques.all_techniques()
    for pid in every:
        assert pid in techniques.descendants(pid)
        assert pid in techniques.ancestors(pid)
        for above in techniques.ancestors(pid):
            assert pid in techniques.descendants(above)
    assert techniques.ancestors(SAXS) >= {SMALL_ANGLE_SCATTERING, XRAY_SCATTERING, XRAY_PROBE}


def test_every_parent_exists_and_ids_are_panet_ids() -> None:
    every = techniques.all_techniques()
    assert len(every) > 40
    for pid, t in every.items():
        assert isinstance(t, Technique)
        assert t.pid == pid
        assert pid.startswith("PaNET") and len(pid) == 10 and pid[5:].isdigit()
        for parent in t.parents:
            assert parent in every, f"{pid} ({t.name}) has unknown parent {parent}"


def test_no_cycles() -> None:
    every = techniques.all_techniques()
    for pid in every:
        strictly_above = set().union(*(techniques.ancestors(p) for p in every[pid].parents))
        assert pid not in strictly_above, f"{pid} is its own ancestor"


def test_all_techniques_is_a_copy() -> None:
    techniques.all_techniques().clear()
    assert SAXS in techniques.all_techniques()


def test_get_by_id_iri_and_name() -> None:
    by_id = techniques.get(SAXS)
    assert by_id.name == "small angle x-ray scattering"
    assert by_id.iri == "http://purl.org/pan-science/PaNET/PaNET01188"
    assert techniques.get(by_id.iri) is by_id
    assert techniques.get("  Small Angle X-ray Scattering ") is by_id
    assert techniques.get("SAXS") is by_id  # PaNET's alternative label
    assert techniques.get("panet01188") is by_id
    assert techniques.get("PaNET:PaNET01188") is by_id  # the CURIE PaNET's own files use
    assert techniques.get("x-ray fluorescence").pid == XRF
    assert techniques.get("XANES").pid == XANES
    assert techniques.get("inelastic neutron scattering").pid == INS
    assert techniques.get("x-ray probe").pid == XRAY_PROBE  # label in release 1.3.0


def test_get_nonsense_raises_its_own_helpful_error() -> None:
    with pytest.raises(techniques.UnknownTechnique) as info:
        techniques.get("nonsense")
    message = str(info.value)
    assert message.startswith("unknown technique 'nonsense'")
    assert "PaNET01188" in message  # shows what an id looks like
    assert not isinstance(info.value, KeyError), "a backend's KeyError must not read as this"
    with pytest.raises(techniques.UnknownTechnique, match="small angle x-ray scattering"):
        techniques.get("small angle x-ray scatering")  # a typo gets a suggestion
    with pytest.raises(techniques.UnknownTechnique, match="PaNET99999"):
        techniques.get("PaNET99999")
    with pytest.raises(techniques.UnknownTechnique):
        techniques.descendants("nonsense")


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        ("NXfluo", (XRF,)),
        ("NXxrf", (XRF,)),
        ("NXxas", (XAS,)),
        ("NXxasproc", (XAS,)),
        ("NXxanes", (XANES,)),
        ("NXmonopd", (POWDER_DIFFRACTION,)),
        ("NXxrd", (XRAY_POWDER_DIFFRACTION,)),
        ("NXxrd_pan", (XRAY_POWDER_DIFFRACTION,)),
        ("NXsas", (SMALL_ANGLE_SCATTERING,)),
        ("NXcanSAS", (SMALL_ANGLE_SCATTERING,)),
        ("NXtomo", (TOMOGRAPHY,)),
        ("NXtomoproc", (TOMOGRAPHY,)),
        ("NXmx", (MX,)),
        ("NXdirecttof", (INS, TOF_SPECTROMETRY)),
        ("NXindirecttof", (INS, TOF_SPECTROMETRY)),
        ("NXtofraw", (NEUTRON_TOF,)),
        ("NXsqom", (INELASTIC_SCATTERING,)),
        ("nxSAS", (SMALL_ANGLE_SCATTERING,)),
        ("NXunknown", ()),
        ("", ()),
        (None, ()),
    ],
)
def test_for_definition(definition: str | None, expected: tuple[str, ...]) -> None:
    assert techniques.for_definition(definition) == expected


@pytest.mark.parametrize(
    ("definition", "probe", "expected"),
    [
        ("NXsas", "x-ray", (SAXS,)),
        ("NXcanSAS", "neutron", (SANS,)),
        ("NXmonopd", "X-Ray", (XRAY_POWDER_DIFFRACTION,)),
        ("NXmonopd", "neutron", (NEUTRON_POWDER_DIFFRACTION,)),
        ("NXtomo", "x-ray", (XRAY_TOMOGRAPHY,)),
        ("NXtomo", "neutron", (TOMOGRAPHY,)),  # PaNET has no neutron tomography
        ("NXsqom", "neutron", (INS,)),
        ("NXsqom", "x-ray", (IXS,)),
        ("NXmx", "x-ray", (MX,)),  # probe-independent definitions ignore the probe
        ("NXsas", "muon", (SMALL_ANGLE_SCATTERING,)),
    ],
)
def test_for_definition_with_probe(definition: str, probe: str, expected: tuple[str, ...]) -> None:
    assert techniques.for_definition(definition, probe=probe) == expected


def test_definitions_search_as_expected() -> None:
    """What the catalogue search does: tag by definition, then query a broader technique."""
    tagged = set(techniques.for_definition("NXsas", probe="x-ray"))
    assert tagged & techniques.descendants("x-ray scattering")
    assert set(techniques.for_definition("NXdirecttof")) & techniques.descendants(
        "neutron scattering"
    )
    assert set(techniques.for_definition("NXxanes")) & techniques.descendants("XAS")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "panet.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_rejects_a_cycle(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "techniques:\n"
        "  - {id: PaNET00001, name: a, parents: [PaNET00003]}\n"
        "  - {id: PaNET00002, name: b, parents: [PaNET00001]}\n"
        "  - {id: PaNET00003, name: c, parents: [PaNET00002]}\n",
    )
    with pytest.raises(ValueError, match="cycle"):
        techniques.load(path)


def test_load_rejects_a_missing_parent_and_unknown_definition_ids(tmp_path: Path) -> None:
    path = _write(tmp_path, "techniques:\n  - {id: PaNET00002, name: b, parents: [PaNET00001]}\n")
    with pytest.raises(ValueError, match="parent PaNET00001"):
        techniques.load(path)
    path = _write(
        tmp_path,
        "techniques:\n  - {id: PaNET00001, name: a, parents: []}\n"
        "definitions:\n  NXfoo: [PaNET00002]\n",
    )
    with pytest.raises(ValueError, match="NXfoo"):
        techniques.load(path)


def test_load_rejects_duplicate_names(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "techniques:\n"
        "  - {id: PaNET00001, name: a, parents: []}\n"
        "  - {id: PaNET00002, name: b, alt_names: [A], parents: []}\n",
    )
    with pytest.raises(ValueError, match="also PaNET00001"):
        techniques.load(path)
