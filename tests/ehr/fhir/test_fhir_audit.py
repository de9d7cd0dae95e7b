"""AuditEvents written by the EHR (IHE BALP; security.md AU-01, AU-03, AU-05, AU-07, AU-09) and
AuditEvents added by the imaging system (``system/AuditEvent.c`` only), against the running EHR."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import accessions, add_client, get, issue, study_id, unique

from imagebridge.apps.demo_data import MAYA, MRN_SYSTEM
from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id

REPORT = "patient/AuditEvent.rs"


def _report(running: RunningStack, patient: str, fhir_user: str) -> list[dict[str, Any]]:
    """The access report of ``patient`` as ``fhir_user`` sees it through the API (AU-07)."""
    token = issue(running, "demo-app", REPORT, patient=patient, fhir_user=fhir_user)
    bundle = get(running, "AuditEvent", token, patient=patient, _count="1000").json()
    assert bundle["total"] == len(bundle["entry"]), "the report fits one page"
    return [e["resource"] for e in bundle["entry"]]


def _by_token(events: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    mark = f"{GRANT_URN}{token_id(token)}"
    return [e for e in events if any(mark in a.get("policy", []) for a in e["agent"])]


def _named(event: dict[str, Any]) -> set[str]:
    return {str((x.get("what") or {}).get("reference")) for x in event["entity"] if x.get("what")}


def test_au01_search_writes_one_balp_event_with_the_why_and_no_secret(running: RunningStack) -> None:
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient="maya", fhir_user="Patient/maya")
    bundle = get(running, "ImagingStudy", token, patient="maya").json()
    events = _by_token(_report(running, "maya", "Patient/maya"), token)
    assert len(events) == 1
    event = events[0]
    assert event["type"]["code"] == "rest"
    assert event["subtype"][0]["code"] == "search-type"
    assert event["action"] == "E"
    assert event["outcome"] == "0"
    assert event["recorded"].endswith("Z")
    assert event["source"]["observer"]["identifier"]["value"] == running.fhir_base
    who = [a["who"] for a in event["agent"]]
    assert {"identifier": {"system": "urn:imagebridge:client-id", "value": "demo-app"}} in who
    assert {"reference": "Patient/maya"} in who
    studies = {f"ImagingStudy/{e['resource']['id']}" for e in bundle["entry"]}
    assert _named(event) == {"Patient/maya", *studies}
    query = next(x for x in event["entity"] if x["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "ImagingStudy?patient=maya"
    assert "Patient/maya is the patient in context (self)" in event["outcomeDesc"]
    assert token not in orjson.dumps(event).decode()  # AU-03: the token's id only


@pytest.mark.parametrize("by", ["patient", "identifiers"])
def test_au09_hidden_study_recorded_out_of_the_requesters_sight(running: RunningStack, by: str) -> None:
    """Elena (proxy of 15-year-old Maya) does not see the sensitive ultrasound; the EHR records that
    the policy hid a match, whether she searched by patient (policy in SQL) or by the studies'
    identifiers (decided in memory). Maya's report shows it; Elena's view of the report shows
    neither the event nor any event that names the hidden study."""
    elena = issue(
        running, "demo-app", "patient/ImagingStudy.rs", patient="maya", fhir_user="RelatedPerson/elena"
    )
    uids = [running.seeded.study_uids[a] for a in ("ACC-3001", "ACC-3002")]
    params = (
        {"patient": "maya"}
        if by == "patient"
        else {"identifier": ",".join(f"urn:dicom:uid|urn:oid:{u}" for u in uids)}
    )
    assert accessions(get(running, "ImagingStudy", elena, **params).json()) == {"ACC-3001"}
    sensitive = f"ImagingStudy/{study_id(running, 'ACC-3002')}"
    maya_token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient="maya")
    assert get(running, sensitive, maya_token).status_code == 200  # Maya reads her own study
    as_maya = _report(running, "maya", "Patient/maya")
    [hiding] = _by_token(as_maya, elena)
    assert "the policy withheld 1 matching resource(s)" in hiding["outcomeDesc"]
    assert sensitive not in _named(hiding)
    assert hiding["meta"]["security"]
    assert any(sensitive in _named(e) for e in _by_token(as_maya, maya_token))
    as_elena = _report(running, "maya", "RelatedPerson/elena")
    assert not _by_token(as_elena, elena)
    assert not [e for e in as_elena if sensitive in _named(e)]
    assert all("withheld" not in e.get("outcomeDesc", "") for e in as_elena)


def test_au07_report_lists_other_actors_and_nothing_about_other_patients(running: RunningStack) -> None:
    reviewer = issue(running, "quality-review", "system/ImagingStudy.rs")
    assert get(running, "ImagingStudy", reviewer, patient="alice").status_code == 200
    assert get(running, "ImagingStudy", reviewer, patient="maya").status_code == 403  # outside its Group
    as_maya = _report(running, "maya", "Patient/maya")
    [refused] = _by_token(as_maya, reviewer)
    assert refused["outcome"] == "4"
    assert all({r for r in _named(e) if r.startswith("Patient/")} == {"Patient/maya"} for e in as_maya)
    as_alice = _report(running, "alice", "Patient/alice")
    assert [e["outcome"] for e in _by_token(as_alice, reviewer)] == ["0"]
    token = issue(running, "demo-app", REPORT, patient="maya", fhir_user="Patient/maya")
    assert get(running, "AuditEvent", token, patient="alice").status_code == 403


def _event(patient_mrn: str, study_uid: str) -> dict[str, Any]:
    """An imaging audit record as the imaging system posts it: patient by MRN, study by UID."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106"},
        "action": "R",
        "recorded": "2026-11-29T03:00:00.000Z",
        "outcome": "0",
        "agent": [
            {
                "who": {"identifier": {"system": "urn:imagebridge:client-id", "value": "demo-app"}},
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "imaging"}},
        "entity": [
            {"what": {"identifier": {"system": MRN_SYSTEM, "value": patient_mrn}}, "role": {"code": "1"}},
            {"what": {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}}},
        ],
    }


def _post(
    running: RunningStack, token: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.post(
        f"{running.fhir_base}/AuditEvent",
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/fhir+json",
            **(headers or {}),
        },
    )


def test_imaging_posts_audit_records_that_join_the_patients_report(running: RunningStack) -> None:
    scope = "system/AuditEvent.c"
    writer = issue(running, add_client(running, "backend", scope), scope)
    created = _post(running, writer, _event(MAYA.mrn, running.seeded.study_uids["ACC-3002"]))
    assert created.status_code == 201, created.text
    stored = created.json()
    sensitive = f"ImagingStudy/{study_id(running, 'ACC-3002')}"
    assert _named(stored) == {"Patient/maya", sensitive}
    assert stored["id"] in {e["id"] for e in _report(running, "maya", "Patient/maya")}
    assert stored["id"] not in {e["id"] for e in _report(running, "maya", "RelatedPerson/elena")}


def test_a_retried_record_is_kept_once(running: RunningStack) -> None:
    """``If-None-Exist`` on the record's identifier (FHIR R4 §3.1.0.8 conditional create): retries,
    even concurrent ones, keep one copy."""
    scope = "system/AuditEvent.c"
    writer = issue(running, add_client(running, "backend", scope), scope)
    key = unique("imaging")
    event = _event(MAYA.mrn, running.seeded.study_uids["ACC-3001"])
    event["entity"].append(
        {"what": {"identifier": {"system": "urn:imagebridge:imaging-audit", "value": key}}}
    )
    condition = {"If-None-Exist": f"entity:identifier=urn:imagebridge:imaging-audit|{key}"}
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: _post(running, writer, event, condition), range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [201]
    assert len({a.json()["id"] for a in answers}) == 1
    copies = [e for e in _report(running, "maya", "Patient/maya") if e["id"] == answers[0].json()["id"]]
    assert len(copies) == 1


@pytest.mark.parametrize(
    ("client", "scope"),
    [
        ("backend", "system/*.cruds"),
        ("backend", "system/ImagingStudy.cru"),
        ("public", "patient/AuditEvent.c"),
        ("public", "user/AuditEvent.cruds"),
    ],
)
def test_only_system_audit_event_create_may_add_records(
    running: RunningStack, client: str, scope: str
) -> None:
    token = issue(
        running, add_client(running, client, scope), scope, patient="maya", fhir_user="Patient/maya"
    )
    response = _post(running, token, _event(MAYA.mrn, running.seeded.study_uids["ACC-3001"]))
    assert response.status_code == 403
    assert response.json()["resourceType"] == "OperationOutcome"


def test_au05_audit_events_cannot_be_changed_or_deleted(running: RunningStack) -> None:
    token = issue(running, "demo-app", "patient/ImagingStudy.rs patient/AuditEvent.cruds", patient="maya")
    get(running, "ImagingStudy", token, patient="maya")
    event = _by_token(_report(running, "maya", "Patient/maya"), token)[0]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    url = f"{running.fhir_base}/AuditEvent"
    answers = [
        httpx.put(f"{url}/{event['id']}", json={**event, "outcome": "8"}, headers=headers),
        httpx.put(url, params={"patient": "maya"}, json={**event, "outcome": "8"}, headers=headers),
        httpx.delete(f"{url}/{event['id']}", headers=headers),
        httpx.delete(url, params={"patient": "maya"}, headers=headers),
    ]
    assert [a.status_code for a in answers] == [405] * 4
    assert all(a.json()["resourceType"] == "OperationOutcome" for a in answers)
    assert get(running, f"AuditEvent/{event['id']}", token).json()["outcome"] == event["outcome"]
    capability = httpx.get(f"{running.fhir_base}/metadata").json()
    entry = next(r for r in capability["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert {i["code"] for i in entry["interaction"]} == {"read", "search-type", "create"}
