"""The FHIR R4 REST surface: bad input is a 4xx OperationOutcome and never a partial write
(FHIR R4 §3.1.0.4, §3.1.1.2 strict/lenient), DiagnosticReport links its study, the
CapabilityStatement parses, and Python ``fhirclient`` (R4 models) reads our resources."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.endpoint import Endpoint
from fhirclient.models.imagingstudy import ImagingStudy
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRServer
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, get, issue, put, unique

WRITER = "system/ImagingStudy.cru system/Endpoint.cru"


def _post(running: RunningStack, token: str, path: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.request(
        "PUT" if "?" in path or path.count("/") else "POST",
        f"{running.fhir_base}/{path}",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        timeout=30,
    )


@pytest.fixture(scope="module")
def writer(running: RunningStack) -> str:
    return issue(running, add_client(running, "backend", WRITER), WRITER)


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status"),
    [
        ("ImagingStudy", b"{not json", "application/fhir+json", 400),
        ("ImagingStudy", b"[1, 2]", "application/fhir+json", 400),
        ("ImagingStudy", b'{"resourceType": "Patient"}', "application/fhir+json", 400),
        ("ImagingStudy", b"[" * 5000 + b"]" * 5000, "application/fhir+json", 400),
        ("ImagingStudy", b'{"resourceType": "ImagingStudy"}', "text/plain", 415),
        ("ImagingStudy", b" " * (9 * 1024 * 1024), "application/fhir+json", 413),
        ("Unicorn", b'{"resourceType": "Unicorn"}', "application/fhir+json", 404),
        ("ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.25.NEW", b"{oops", "application/fhir+json", 400),
        ("ImagingStudy?bogus=1", b'{"resourceType": "ImagingStudy"}', "application/fhir+json", 400),
        ("ImagingStudy/x1", b'{"resourceType": "ImagingStudy", "id": "x2"}', "application/fhir+json", 400),
        (
            "ImagingStudy/bad$id",
            b'{"resourceType": "ImagingStudy", "id": "bad$id"}',
            "application/fhir+json",
            400,
        ),
    ],
)
def test_bad_writes_are_4xx_operation_outcomes(
    running: RunningStack, writer: str, path: str, body: bytes, content_type: str, status: int
) -> None:
    response = _post(running, writer, path, body, content_type)
    assert response.status_code == status, response.text[:300]
    assert response.json()["resourceType"] == "OperationOutcome"


def test_failed_conditional_update_writes_nothing(running: RunningStack, writer: str) -> None:
    uid = f"2.25.{uuid.uuid4().int}"
    path = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}"
    truncated = b'{"resourceType": "ImagingStudy", "subject":'
    assert _post(running, writer, path, truncated, "application/fhir+json").status_code == 400
    reader = issue(running, "quality-review", "system/ImagingStudy.rs")
    found = get(running, "ImagingStudy", reader, identifier=f"urn:dicom:uid|urn:oid:{uid}")
    assert found.json()["total"] == 0


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"patient": "alice", "_count": "abc"}, 400),
        ({"patient": "alice", "_count": "-1"}, 400),
        ({"patient": "alice", "_sort": "identifier"}, 400),
        ({"patient": "alice", "started": "last tuesday"}, 400),
        ({"patient": "alice' OR '1'='1"}, 400),
        ({"patient": "alice'--"}, 403),
        ({"patient": "alice", "identifier": "' OR 1=1 --"}, 200),
        ({"patient": "alice", "modality": "CT%'; DROP TABLE resources; --"}, 200),
        ({"patient": "alice", "_include": "ImagingStudy:subject"}, 400),
        ({"patient": "alice", "unknown": "1"}, 200),
    ],
)
def test_bad_searches(running: RunningStack, params: dict[str, str], status: int) -> None:
    token = issue(running, "quality-review", "system/ImagingStudy.rs")
    response = get(running, "ImagingStudy", token, **params)
    assert response.status_code == status, response.text[:300]
    body = response.json()
    if status == 200:
        assert body["resourceType"] == "Bundle"
        assert body["total"] == (4 if "unknown" in params else 0)
    else:
        assert body["resourceType"] == "OperationOutcome"


def test_strict_handling_rejects_unknown_parameters(running: RunningStack) -> None:
    token = issue(running, "quality-review", "system/ImagingStudy.rs")
    response = httpx.get(
        f"{running.fhir_base}/ImagingStudy",
        params={"patient": "alice", "unknown": "1"},
        headers={"Authorization": f"Bearer {token}", "Prefer": "handling=strict"},
    )
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


def test_diagnostic_report_links_its_study_and_accession(running: RunningStack) -> None:
    token = issue(running, "quality-review", "system/ImagingStudy.rs system/DiagnosticReport.rs")
    reports = get(running, "DiagnosticReport", token, patient="alice").json()
    report = next(
        e["resource"] for e in reports["entry"] if e["resource"]["identifier"][0]["value"] == "ACC-1004"
    )
    study = get(running, report["imagingStudy"][0]["reference"], token)
    assert study.status_code == 200
    assert any(i.get("value") == "ACC-1004" for i in study.json()["identifier"])


def test_restricted_report_hidden_like_its_study(running: RunningStack) -> None:
    token = issue(running, "demo-app", "patient/*.rs", patient="maya", fhir_user="RelatedPerson/elena")
    reports = get(running, "DiagnosticReport", token, patient="maya").json()
    assert {e["resource"]["identifier"][0]["value"] for e in reports["entry"]} == {"ACC-3001"}


class _Bearer:
    def __init__(self, token: str) -> None:
        self.token = token

    def can_sign_headers(self) -> bool:
        return True

    def signed_headers(self, headers: dict[str, Any]) -> dict[str, Any]:
        return {**headers, "Authorization": f"Bearer {self.token}"}


def test_fhirclient_reads_patient_study_and_endpoint(running: RunningStack) -> None:
    """fhirclient validates strictly. The seeded studies' ``started`` lacks a timezone (the
    publisher's output, reported upstream), so this reads a study of a patient of its own, pointing
    at the published WADO-RS Endpoint."""
    reader = issue(running, "quality-review", "system/ImagingStudy.rs")
    acc1001 = {"identifier": "ACC-1001"}
    published = get(running, "ImagingStudy", reader, patient="alice", **acc1001).json()["entry"][0][
        "resource"
    ]
    pid = unique("fhirclient")
    put(
        running,
        {"resourceType": "Patient", "id": pid, "birthDate": "1990-01-01"},
        {
            **{k: v for k, v in published.items() if k not in ("meta", "id")},
            "id": unique("study"),
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{uuid.uuid4().int}"}],
            "subject": {"reference": f"Patient/{pid}"},
            "started": "2024-03-12T09:30:00Z",
        },
    )
    server = FHIRServer(None, base_uri=running.fhir_base)
    server.auth = _Bearer(issue(running, "demo-app", "patient/*.rs", patient=pid))
    capability = CapabilityStatement.read_from("metadata", server)
    assert capability.fhirVersion == "4.0.1"
    patient = Patient.read(pid, server)
    assert patient.birthDate.isostring == "1990-01-01"
    studies = list(ImagingStudy.where(struct={"patient": pid}).perform_resources_iter(server))
    assert len(studies) == 1
    assert studies[0].series[0].instance[0].sopClass.code.startswith("urn:oid:")
    endpoint = Endpoint.read(studies[0].endpoint[0].reference.removeprefix("Endpoint/"), server)
    assert endpoint.connectionType.code == "dicom-wado-rs"
    assert endpoint.address.startswith("http://127.0.0.1")
