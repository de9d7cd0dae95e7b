"""Publishing by conditional update (FHIR R4 §3.1.0.4.3; ARCHITECTURE.md "Publishing"):
patient matching by MRN, unreconciled studies and the administrator's CLI, labels the EHR
applied survive the publisher's updates, and a study never moves to another patient."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, cohort, get, issue, published_study, put, unique

from imagebridge.apps.demo_data import MRN_SYSTEM, RESTRICTED

SCOPE = "system/ImagingStudy.cru system/Endpoint.cru"


@pytest.fixture(scope="module")
def publisher(running: RunningStack) -> str:
    return issue(running, add_client(running, "backend", SCOPE), SCOPE)


def _publish(running: RunningStack, token: str, study: dict[str, Any]) -> httpx.Response:
    uid = study["identifier"][0]["value"]
    return httpx.put(
        f"{running.fhir_base}/ImagingStudy",
        params={"identifier": f"urn:dicom:uid|{uid}"},
        json=study,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )


def _cli(running: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imagebridge", "ehr", "studies", *args],
        env={**os.environ, **running.stack.ehr_env()},
        capture_output=True,
        text=True,
        check=False,
    )


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@pytest.fixture(scope="module")
def people(running: RunningStack) -> tuple[str, str]:
    """Two patients of this module's own (so no other test sees their new studies); MRN = id."""
    ids = (unique("pub-a"), unique("pub-b"))
    put(
        running,
        *(
            {"resourceType": "Patient", "id": pid, "identifier": [{"system": MRN_SYSTEM, "value": pid}]}
            for pid in ids
        ),
    )
    return ids


def test_labels_survive_republishing_and_subject_never_moves(
    running: RunningStack, publisher: str, people: tuple[str, str]
) -> None:
    a, b = people
    uid = _uid()
    created = _publish(running, publisher, published_study(uid, a))
    assert created.status_code == 201
    stored = created.json()
    assert stored["subject"]["reference"] == f"Patient/{a}"
    put(running, {**stored, "meta": {"security": [RESTRICTED]}})  # the EHR labels it
    again = _publish(running, publisher, published_study(uid, a))
    assert again.status_code == 200
    assert RESTRICTED in again.json()["meta"]["security"]
    moved = _publish(running, publisher, published_study(uid, b))
    assert moved.status_code == 409
    assert moved.json()["resourceType"] == "OperationOutcome"
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient=a)
    found = get(running, "ImagingStudy", token, identifier=f"urn:dicom:uid|urn:oid:{uid}").json()
    assert found["total"] == 1


def test_unreconciled_listed_and_linked_by_the_administrator(
    running: RunningStack, publisher: str, people: tuple[str, str]
) -> None:
    a, b = people
    uid, unknown = _uid(), unique("MRN-UNKNOWN")
    assert _publish(running, publisher, published_study(uid, unknown)).status_code == 201
    listed = _cli(running, "unreconciled")
    assert listed.returncode == 0
    assert uid in listed.stdout
    assert unknown in listed.stdout
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient=a)
    query = {"identifier": f"urn:dicom:uid|urn:oid:{uid}"}
    assert get(running, "ImagingStudy", token, **query).json()["total"] == 0
    assert _cli(running, "link", uid, f"Patient/{a}").returncode == 0
    assert get(running, "ImagingStudy", token, **query).json()["total"] == 1
    # Republishing with the still-unknown MRN keeps the administrator's link.
    assert _publish(running, publisher, published_study(uid, unknown)).status_code == 200
    assert get(running, "ImagingStudy", token, **query).json()["total"] == 1
    assert _cli(running, "link", uid, f"Patient/{b}").returncode == 1  # never moved


def test_concurrent_publishes_of_one_study_create_it_once(
    running: RunningStack, publisher: str, people: tuple[str, str]
) -> None:
    """Conditional updates racing on the same identifier (a publisher retrying, or several imaging
    workers) store one study: the match and the write are one atomic step (FHIR R4 §3.1.0.4.3)."""
    uid = _uid()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda _: _publish(running, publisher, published_study(uid, people[0])), range(8))
        )
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient=people[0])
    found = get(running, "ImagingStudy", token, identifier=f"urn:dicom:uid|urn:oid:{uid}").json()
    assert found["total"] == len(found["entry"]) == 1


def test_backend_bound_to_a_group_writes_only_within_it(
    running: RunningStack, people: tuple[str, str]
) -> None:
    """Issue 4: a backend client is limited to its registered Group, for writes as for reads; only a
    client registered without a Group (the publishing imaging system) writes any patient's study.
    Nor may it enlarge its own cohort."""
    inside, outside = people
    group = unique("cohort")
    put(running, cohort(group, inside))
    scope = "system/ImagingStudy.cru system/Group.cru"
    token = issue(running, add_client(running, "backend", scope, f"Group/{group}"), scope)
    assert _publish(running, token, published_study(_uid(), inside)).status_code == 201
    refused = _publish(running, token, published_study(_uid(), outside))
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"
    enlarged = httpx.put(
        f"{running.fhir_base}/Group/{group}",
        json=cohort(group, inside, outside),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )
    assert enlarged.status_code == 403
