"""QIDO-RS against the running imaging system (PS3.18 §10.6), on SQLite and PostgreSQL.

The seeded demo hospital: Alice (4 studies), Bob (2), Maya (2). The quality-review backend
client may see Alice's studies only (its Group); Elena's token acts for Maya. Every search is
checked for what it returns and for what it must never return.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.conftest import TEST_SCALE, RunningStack
from tests.imaging.tokens import maya_proxy_token, quality_review_token

from imagebridge.apps import demo_data

DICOM_JSON = {"Accept": "application/dicom+json"}
SPECS = {spec.accession_number: spec for spec, _ in demo_data.studies(TEST_SCALE)}


def accessions(patient: demo_data.Person) -> set[str]:
    return {a for a, s in SPECS.items() if s.patient.patient_id == patient.mrn}


@pytest.fixture(scope="module")
def alice_reviewer(running: RunningStack) -> Iterator[httpx.Client]:
    """HTTP client with the quality-review backend token (sees Alice's studies only)."""
    token = quality_review_token(running)
    with httpx.Client(
        base_url=running.dicomweb_base, headers={"Authorization": f"Bearer {token}", **DICOM_JSON}, timeout=30
    ) as http:
        yield http


@pytest.fixture(scope="module")
def maya_proxy(running: RunningStack) -> Iterator[httpx.Client]:
    token = maya_proxy_token(running)
    with httpx.Client(
        base_url=running.dicomweb_base, headers={"Authorization": f"Bearer {token}", **DICOM_JSON}, timeout=30
    ) as http:
        yield http


def value(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def uids(response: httpx.Response, tag: str = "0020000D") -> list[str]:
    assert response.status_code == 200, response.text
    return [value(r, tag) for r in response.json()]


def study_uids_of(running: RunningStack, accession_numbers: set[str]) -> set[str]:
    return {running.seeded.study_uids[a] for a in accession_numbers}


def test_studies_return_only_visible_studies_with_required_attributes(
    running: RunningStack, alice_reviewer: httpx.Client
) -> None:
    response = alice_reviewer.get("/studies")
    assert response.headers["content-type"] == "application/dicom+json"
    assert "warning" not in response.headers
    results = response.json()
    assert {value(r, "0020000D") for r in results} == study_uids_of(running, accessions(demo_data.ALICE))
    for result in results:
        assert list(result) == sorted(result)
        for tag in ("00080020", "00080030", "00080050", "00080061", "00080090", "00081190", "00100010"):
            assert "vr" in result[tag]
        for tag in ("00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208"):
            assert "vr" in result[tag]
        assert value(result, "00100020") == demo_data.ALICE.mrn
        spec = SPECS[value(result, "00080050")]
        assert result["00080061"]["Value"] == [spec.modality]
        assert value(result, "00201206") == spec.series_count
        assert value(result, "00201208") == spec.series_count * spec.instances_per_series
        assert value(result, "00081190") == f"{running.dicomweb_base}/studies/{value(result, '0020000D')}"
        assert "00081030" not in result  # StudyDescription only when asked for


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"PatientName": "Anders^Alice"}, {"ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004"}),
        ({"PatientName": "Anders^A*"}, {"ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004"}),
        (
            {"PatientName": "anders", "fuzzymatching": "true"},
            {"ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004"},
        ),
        ({"PatientName": "anders"}, set()),
        ({"StudyDate": "20240301-20240601"}, {"ACC-1001", "ACC-1002"}),
        ({"StudyDate": "-20240401"}, {"ACC-1001", "ACC-1003"}),
        ({"ModalitiesInStudy": "MR"}, {"ACC-1002", "ACC-1004"}),
        ({"00080061": "CT"}, {"ACC-1001"}),
        ({"AccessionNumber": "ACC-100?"}, {"ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004"}),
        ({"AccessionNumber": "ACC-1001"}, {"ACC-1001"}),
        ({"PatientID": "MRN-1001", "StudyDate": "20240501-"}, {"ACC-1002", "ACC-1004"}),
        # never another patient's study, whatever the filter
        ({"PatientID": "MRN-1002"}, set()),
        ({"PatientName": "*"}, {"ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004"}),
        ({"AccessionNumber": "ACC-2*"}, set()),
        ({"ModalitiesInStudy": "DX,US"}, set()),
    ],
)
def test_study_matching(
    running: RunningStack, alice_reviewer: httpx.Client, params: dict[str, str], expected: set[str]
) -> None:
    found = alice_reviewer.get("/studies", params=params)
    assert set(uids(found)) == study_uids_of(running, expected & set(SPECS))


def test_uid_list_mixing_patients_returns_only_the_visible(
    running: RunningStack, alice_reviewer: httpx.Client
) -> None:
    alice, bob, maya = (running.seeded.study_uids[a] for a in ("ACC-1001", "ACC-2002", "ACC-3001"))
    found = alice_reviewer.get("/studies", params={"StudyInstanceUID": f"{bob},{alice},{maya}"})
    assert uids(found) == [alice]


def test_limit_offset_and_warning(running: RunningStack, alice_reviewer: httpx.Client) -> None:
    everything = uids(alice_reviewer.get("/studies"))
    first = alice_reviewer.get("/studies", params={"limit": "3"})
    assert uids(first) == everything[:3]
    assert first.headers["warning"].startswith("299 ")
    rest = alice_reviewer.get("/studies", params={"limit": "3", "offset": "3"})
    assert uids(rest) == everything[3:]
    assert "warning" not in rest.headers
    assert uids(alice_reviewer.get("/studies", params={"offset": "100"})) == []


def test_includefield(alice_reviewer: httpx.Client) -> None:
    named = alice_reviewer.get("/studies", params={"includefield": "StudyDescription", "limit": "1"}).json()
    assert "00081030" in named[0]
    by_tag = alice_reviewer.get("/studies", params={"includefield": "00081030", "limit": "1"}).json()
    assert by_tag == named
    everything = alice_reviewer.get("/studies", params={"includefield": "all", "limit": "1"}).json()
    assert set(named[0]) <= set(everything[0])
    series_level = alice_reviewer.get("/studies", params={"includefield": "Modality", "limit": "1"}).json()
    assert "00080060" not in series_level[0]  # series attributes are not returned for studies


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        ("PatientNmae=X", 400, "unknown attribute"),
        ("StudyDate=2024*", 400, "StudyDate"),
        ("StudyInstanceUID=1.2.*", 400, "StudyInstanceUID"),
        ("limit=-1", 400, "limit"),
        ("Modality=CT", 400, "series-level"),
    ],
)
def test_bad_queries_are_400(alice_reviewer: httpx.Client, query: str, status: int, message: str) -> None:
    response = alice_reviewer.get(f"/studies?{query}")
    assert response.status_code == status
    assert message in response.json()["message"]


def test_only_dicom_json_is_offered(alice_reviewer: httpx.Client) -> None:
    refused = alice_reviewer.get("/studies", headers={"Accept": "text/html"})
    assert refused.status_code == 406
    assert "application/dicom+json" in refused.json()["message"]
    assert alice_reviewer.get("/studies", headers={"Accept": "*/*"}).status_code == 200


def test_series_and_instances_within_a_study(running: RunningStack, alice_reviewer: httpx.Client) -> None:
    study = running.seeded.study_uids["ACC-1002"]
    spec = SPECS["ACC-1002"]
    series = alice_reviewer.get(f"/studies/{study}/series").json()
    assert len(series) == spec.series_count
    for result in series:
        assert list(result) == sorted(result)
        assert value(result, "00080060") == "MR"
        assert value(result, "00201209") == spec.instances_per_series
        for tag in ("0008103E", "0020000E", "00200011", "00400244", "00400245", "00081190"):
            assert "vr" in result[tag]
        assert "00100010" not in result  # study attributes only for the All Series resource
    first = value(series[0], "0020000E")
    instances = alice_reviewer.get(f"/studies/{study}/series/{first}/instances").json()
    assert len(instances) == spec.instances_per_series
    assert [value(i, "00200013") for i in instances] == list(range(1, spec.instances_per_series + 1))
    for result in instances:
        for tag in ("00080016", "00080018", "00200013", "00280010", "00280011", "00280100", "00081190"):
            assert "vr" in result[tag]
        assert value(result, "00081190").endswith(f"/series/{first}/instances/{value(result, '00080018')}")
    numbered = alice_reviewer.get(f"/studies/{study}/instances", params={"InstanceNumber": "2"}).json()
    assert len(numbered) == spec.series_count
    assert {value(i, "00080060") for i in numbered} == {"MR"}  # series attributes included


def test_all_series_and_all_instances_are_filtered(
    running: RunningStack, alice_reviewer: httpx.Client
) -> None:
    alice = study_uids_of(running, accessions(demo_data.ALICE))
    all_series = alice_reviewer.get("/series").json()
    assert {value(s, "0020000D") for s in all_series} == alice
    assert all(value(s, "00100020") == demo_data.ALICE.mrn for s in all_series)
    ct = alice_reviewer.get("/series", params={"Modality": "CT"}).json()
    assert {value(s, "0020000D") for s in ct} == {running.seeded.study_uids["ACC-1001"]}
    instances = alice_reviewer.get("/instances", params={"limit": "10000"}).json()
    expected = sum(
        s.series_count * s.instances_per_series for a, s in SPECS.items() if a in accessions(demo_data.ALICE)
    )
    assert len(instances) == expected
    assert {value(i, "0020000D") for i in instances} == alice
    assert alice_reviewer.get("/instances", params={"PatientID": "MRN-1003"}).json() == []


def test_a_foreign_study_looks_exactly_unknown(running: RunningStack, alice_reviewer: httpx.Client) -> None:
    bob = running.seeded.study_uids["ACC-2002"]
    for path in ("series", "instances"):
        foreign = alice_reviewer.get(f"/studies/{bob}/{path}")
        unknown = alice_reviewer.get(f"/studies/2.25.999/{path}")
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.content == unknown.content
    assert alice_reviewer.get("/studies/not-a-uid/series").status_code == 400


def test_proxy_token_sees_only_maya(running: RunningStack, maya_proxy: httpx.Client) -> None:
    maya = study_uids_of(running, accessions(demo_data.MAYA))
    for params in (
        {},
        {"PatientName": "*"},
        {"PatientName": "A*"},
        {"PatientID": "MRN-1001"},
        {"limit": "1"},
    ):
        found = set(uids(maya_proxy.get("/studies", params=params)))
        assert found <= maya
    assert running.seeded.study_uids["ACC-3001"] in uids(maya_proxy.get("/studies"))
    mixed = ",".join(running.seeded.study_uids[a] for a in ("ACC-1001", "ACC-2001", "ACC-3001"))
    assert uids(maya_proxy.get("/studies", params={"StudyInstanceUID": mixed})) == [
        running.seeded.study_uids["ACC-3001"]
    ]
    for result in maya_proxy.get("/studies").json():
        spec = SPECS[value(result, "00080050")]
        assert value(result, "00201208") == spec.series_count * spec.instances_per_series
        assert result["00080061"]["Value"] == [spec.modality]
    assert {value(s, "0020000D") for s in maya_proxy.get("/series").json()} <= maya
    assert {value(i, "0020000D") for i in maya_proxy.get("/instances").json()} <= maya
    assert maya_proxy.get("/series", params={"Modality": "CT"}).json() == []
    alice = running.seeded.study_uids["ACC-1001"]
    assert maya_proxy.get(f"/studies/{alice}/series").status_code == 404


def test_no_token_is_401(running: RunningStack) -> None:
    response = httpx.get(f"{running.dicomweb_base}/studies", headers=DICOM_JSON)
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]


def test_instance_includefield_reads_the_instance_header(
    running: RunningStack, alice_reviewer: httpx.Client
) -> None:
    study = running.seeded.study_uids["ACC-1004"]
    named = alice_reviewer.get(
        f"/studies/{study}/instances", params={"includefield": "PhotometricInterpretation"}
    )
    assert all(value(i, "00280004") == "MONOCHROME2" for i in named.json())
    everything = alice_reviewer.get(
        f"/studies/{study}/instances", params={"includefield": "all", "limit": "1"}
    )
    pixel_data = everything.json()[0]["7FE00010"]["BulkDataURI"]
    assert pixel_data.startswith(f"{running.dicomweb_base}/studies/{study}/series/")
