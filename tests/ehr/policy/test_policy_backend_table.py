"""The IG's Backend Services example table (spec.md §1.8), one test per row.

A backend client pre-authorized for a cohort holding patient A (alice); study A (the cardiac MR)
is within its access, study B (alice's chest CR) is withheld from this client by a Consent, and
bob is outside the cohort.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import accessions, add_client, cohort, get, issue, put, study_id, unique

from imagebridge.apps.smart_client import fetch_study, study_uid
from imagebridge.ehr.policy.consent import CLIENT_SYSTEM

WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Table:
    running: RunningStack
    token: str


@pytest.fixture(scope="module")
def table(running: RunningStack) -> Table:
    group = unique("cohort")
    client_id = add_client(running, "backend", "system/ImagingStudy.rs", f"Group/{group}")
    put(
        running,
        cohort(group, "alice"),
        {
            "resourceType": "Consent",
            "id": unique("consent"),
            "status": "active",
            "patient": {"reference": "Patient/alice"},
            "provision": {
                "type": "deny",
                "actor": [{"reference": {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}}}],
                "data": [
                    {
                        "meaning": "instance",
                        "reference": {"reference": f"ImagingStudy/{study_id(running, 'ACC-1003')}"},
                    }
                ],
            },
        },
    )
    return Table(running, issue(running, client_id, "system/ImagingStudy.rs"))


def test_search_returns_a_and_its_endpoint_omits_b(table: Table) -> None:
    response = get(
        table.running, "ImagingStudy", table.token, patient="alice", _include="ImagingStudy:endpoint"
    )
    bundle = response.json()
    assert response.status_code == 200
    found = accessions(bundle)
    assert found == {"ACC-1001", "ACC-1002", "ACC-1004"}  # alice's seeded studies but B (ACC-1003)
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert bundle["total"] == len(matches) == len(found)
    assert any(e["resource"]["resourceType"] == "Endpoint" for e in bundle["entry"])


def test_retrieve_a_through_its_endpoint(table: Table) -> None:
    bundle = get(
        table.running, "ImagingStudy", table.token, patient="alice", _include="ImagingStudy:endpoint"
    ).json()
    study_a = next(
        e["resource"]
        for e in bundle["entry"]
        if study_uid(e["resource"]) == table.running.seeded.study_uids["ACC-1004"]
    )
    with httpx.Client(timeout=60) as http:
        parts = list(fetch_study(study_a, bundle, table.token, http))
    assert len(parts) == study_a["numberOfInstances"]


def test_request_b_directly_is_denied(table: Table) -> None:
    uid_b = table.running.seeded.study_uids["ACC-1003"]
    response = httpx.get(
        f"{table.running.dicomweb_base}/studies/{uid_b}",
        headers={"Authorization": f"Bearer {table.token}", "Accept": WADO_ACCEPT},
        timeout=30,
    )
    assert response.status_code == 404
    assert b"DICM" not in response.content


def test_patient_outside_the_cohort_is_403(table: Table) -> None:
    response = get(table.running, "ImagingStudy", table.token, patient="bob")
    assert response.status_code == 403
    assert response.json()["resourceType"] == "OperationOutcome"
