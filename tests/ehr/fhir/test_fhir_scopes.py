"""Scope enforcement matrix (SMART App Launch 2.2 scopes; spec.md §1.4): patient, user and system
levels, v1 and v2 spellings, wildcards, granular query-narrowed scopes applied one by one."""

from __future__ import annotations

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import accessions, get, issue

DX = "modality=http://dicom.nema.org/resources/ontology/DCM|DX"
US = "modality=http://dicom.nema.org/resources/ontology/DCM|US"
MAYA = {"ACC-3001", "ACC-3002"}

# (client, scope, patient, fhirUser, search params, expected status, expected accessions)
ROWS = [
    ("demo-app", "patient/ImagingStudy.rs", "maya", "Patient/maya", {"patient": "maya"}, 200, MAYA),
    ("demo-app", "patient/ImagingStudy.read", "maya", None, {"patient": "maya"}, 200, MAYA),
    ("demo-app", "patient/*.rs", "maya", None, {}, 200, MAYA),
    ("demo-app", "patient/*.read", "maya", None, {"patient": "maya"}, 200, MAYA),
    ("demo-app", "patient/Patient.rs", "maya", None, {"patient": "maya"}, 403, None),
    ("demo-app", "patient/ImagingStudy.c", "maya", None, {"patient": "maya"}, 403, None),
    ("demo-app", "patient/ImagingStudy.r", "maya", None, {"patient": "maya"}, 403, None),
    ("demo-app", f"patient/ImagingStudy.rs?{DX}", "maya", None, {}, 200, {"ACC-3001"}),
    ("demo-app", f"patient/ImagingStudy.rs?{DX} patient/ImagingStudy.rs?{US}", "maya", None, {}, 200, MAYA),
    ("demo-app", f"patient/ImagingStudy.rs?{US}", "maya", "RelatedPerson/elena", {}, 200, set()),
    ("demo-app", "patient/ImagingStudy.rs", "maya", None, {"patient": "bob"}, 403, None),
    ("demo-app", "patient/ImagingStudy.rs", "maya", "Patient/alice", {}, 200, set()),
    ("demo-app", "user/ImagingStudy.rs", None, "Patient/maya", {"patient": "maya"}, 200, MAYA),
    ("demo-app", "user/*.read", None, "RelatedPerson/elena", {}, 200, {"ACC-3001"}),
    ("demo-app", "user/ImagingStudy.rs", None, None, {"patient": "maya"}, 403, None),
    ("demo-app", "user/ImagingStudy.rs", None, None, {}, 200, set()),
    ("quality-review", "system/ImagingStudy.rs", None, None, {"patient": "alice"}, 200, None),
    ("quality-review", "system/*.read", None, None, {"patient": "alice"}, 200, None),
    ("quality-review", "system/Patient.rs", None, None, {"patient": "alice"}, 403, None),
    ("quality-review", "system/ImagingStudy.rs", None, None, {"patient": "maya"}, 403, None),
    ("quality-review", "patient/ImagingStudy.rs", None, None, {}, 200, set()),
    (
        "quality-review",
        "system/ImagingStudy.rs?modality=http://dicom.nema.org/resources/ontology/DCM|CT",
        None,
        None,
        {},
        200,
        {"ACC-1001"},
    ),
]


@pytest.mark.parametrize(("client", "scope", "patient", "fhir_user", "params", "status", "expected"), ROWS)
def test_scope_matrix(
    running: RunningStack,
    client: str,
    scope: str,
    patient: str | None,
    fhir_user: str | None,
    params: dict[str, str],
    status: int,
    expected: set[str] | None,
) -> None:
    token = issue(running, client, scope, patient=patient, fhir_user=fhir_user)
    response = get(running, "ImagingStudy", token, **params)
    assert response.status_code == status, response.text
    if status == 403:
        assert 'error="insufficient_scope"' in response.headers.get("www-authenticate", "") or (
            response.json()["issue"][0]["code"] == "forbidden"
        )
    if expected is not None:
        bundle = response.json()
        assert accessions(bundle) == expected
        assert bundle["total"] == len(expected)


def test_no_token_is_401(running: RunningStack) -> None:
    response = get(running, "ImagingStudy", None, patient="maya")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_read_scope_does_not_allow_writes(running: RunningStack) -> None:
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient="maya")
    response = httpx.post(
        f"{running.fhir_base}/ImagingStudy",
        json={
            "resourceType": "ImagingStudy",
            "status": "available",
            "subject": {"reference": "Patient/maya"},
        },
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_paging_counts_only_visible_studies(running: RunningStack) -> None:
    token = issue(running, "quality-review", "system/ImagingStudy.rs")
    first = get(running, "ImagingStudy", token, patient="alice", _count="3", _sort="-started").json()
    assert first["total"] == 4
    assert len(first["entry"]) == 3
    next_url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = httpx.get(next_url, headers={"Authorization": f"Bearer {token}"}).json()
    assert len(second["entry"]) == 1
    started = [e["resource"]["started"] for e in first["entry"] + second["entry"]]
    assert started == sorted(started, reverse=True)
