"""FHIR-side isolation (security.md §3: ISO-04, ISO-05, ISO-12 … ISO-16) against the running EHR.

Each test tries the attack and asserts it fails. Rows already proven elsewhere are referenced,
not repeated:

- ISO-12 proxy cannot switch patient by parameter: tests/ehr/policy/test_policy_worked_examples.py
  ``test_proxy_cannot_switch_patient``; a tampered patient pick is 403:
  tests/ehr/smart/test_attacks.py ``test_as15_consent_tampering``.
- ISO-13 ended proxy / withdrawn consent: tests/ehr/policy/test_policy_rules.py
  ``test_ended_proxy_sees_nothing`` and ``test_consent_withholds_all_imaging_from_one_app`` (new
  tokens); here with a token that is already live.
- ISO-14 sensitive study hidden from the proxy: test_policy_worked_examples.py
  ``test_elena_sees_the_ankle_not_the_sensitive_ultrasound``.
- ISO-16 read-only token cannot write (patient level): tests/ehr/fhir/test_fhir_scopes.py
  ``test_read_scope_does_not_allow_writes``; a scope not covering the type: ``test_scope_matrix``
  (``system/Patient.rs`` row). DICOMweb half: tests/security/test_rs_resource_server.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import DCM, accessions, add_client, get, issue, put, study_id, unique

from imagebridge.ehr.policy.consent import CLIENT_SYSTEM

UNKNOWN_UID = "2.25.424242424242424242"


def _uid_query(uid: str) -> dict[str, str]:
    return {"identifier": f"urn:dicom:uid|urn:oid:{uid}"}


def _comparable(bundle: dict[str, Any]) -> dict[str, Any]:
    """A searchset without its self link (which repeats the query)."""
    return {k: v for k, v in bundle.items() if k != "link"}


def _elena(running: RunningStack, scope: str = "patient/ImagingStudy.rs") -> str:
    return issue(running, "demo-app", scope, patient="maya", fhir_user="RelatedPerson/elena")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"_count": "1000"},
        {"_count": "1", "_offset": "1"},
        {"_sort": "-started"},
        {"modality": f"{DCM}|CT,{DCM}|MR,{DCM}|DX,{DCM}|US,{DCM}|CR"},
        {"_lastUpdated": "ge2000-01-01"},
        {"started": "ge1900-01-01"},
    ],
    ids=["no-filter", "count-1000", "paging", "sorted", "every-modality", "lastUpdated", "started"],
)
def test_iso04_unfiltered_searches_show_and_count_only_the_patient_in_context(
    running: RunningStack, params: dict[str, str]
) -> None:
    """ISO-04 (FHIR): however wide the search, a patient-context token sees and counts only its own."""
    token = issue(running, "demo-app", "patient/ImagingStudy.rs patient/DiagnosticReport.rs", patient="alice")
    bundle = get(running, "ImagingStudy", token, **params).json()
    subjects = {e["resource"]["subject"]["reference"] for e in bundle.get("entry", [])}
    assert subjects <= {"Patient/alice"}
    assert bundle["total"] == 4  # Alice's seeded studies, never Bob's or Maya's
    reports = get(running, "DiagnosticReport", token, _count="1000").json()
    assert {e["resource"]["subject"]["reference"] for e in reports.get("entry", [])} <= {"Patient/alice"}


def test_iso05_explicit_filters_for_another_patient_answer_like_unknown_values(running: RunningStack) -> None:
    """ISO-05 (FHIR): Bob's real UID, study id or report link finds nothing, exactly like an unknown one;
    naming Bob as ``patient`` (or ``subject``) is 403 (Argonaut IG)."""
    token = issue(running, "demo-app", "patient/ImagingStudy.rs patient/DiagnosticReport.rs", patient="alice")
    bob_uid = running.seeded.study_uids["ACC-2001"]
    by_bob = get(running, "ImagingStudy", token, **_uid_query(bob_uid))
    by_unknown = get(running, "ImagingStudy", token, **_uid_query(UNKNOWN_UID))
    assert by_bob.status_code == by_unknown.status_code == 200
    assert (
        _comparable(by_bob.json())
        == _comparable(by_unknown.json())
        == {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": 0,
            "entry": [],
        }
    )
    bob_study = f"ImagingStudy/{study_id(running, 'ACC-2001')}"
    linked = get(running, "DiagnosticReport", token, **{"imaging-study": bob_study}).json()
    assert linked["total"] == 0
    for name in ("patient", "subject"):
        assert get(running, "ImagingStudy", token, **{name: "bob"}).status_code == 403
    assert get(running, bob_study, token).status_code == 404


def test_iso12_parameters_never_switch_the_proxys_context(running: RunningStack) -> None:
    """ISO-12: Elena's token for Maya cannot be pointed at Alice by repeating, listing or spelling
    the patient parameter differently, nor by reading Alice's study or her access report."""
    token = _elena(running, "patient/ImagingStudy.rs patient/AuditEvent.rs")
    answers = [
        get(running, "ImagingStudy", token, patient="Patient/alice"),
        get(running, "ImagingStudy", token, subject="alice"),
        get(running, "AuditEvent", token, patient="alice"),
        httpx.get(f"{running.fhir_base}/ImagingStudy?patient=maya&patient=alice", headers=_bearer(token)),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    listed = get(running, "ImagingStudy", token, patient="maya,alice")
    assert listed.status_code == 400
    assert get(running, f"ImagingStudy/{study_id(running, 'ACC-1001')}", token).status_code == 404
    assert (
        accessions(
            get(running, "ImagingStudy", token, **_uid_query(running.seeded.study_uids["ACC-1001"])).json()
        )
        == set()
    )


def test_iso13_proxy_link_ended_while_the_token_is_live(running: RunningStack) -> None:
    """ISO-13: the policy is evaluated on every request, so ending the RelatedPerson (or a Consent
    withholding imaging from the app) takes effect on the very next request of a live token, and
    the grant can no longer be refreshed."""
    child, proxy = unique("iso13-child"), unique("iso13-proxy")
    study = {
        "resourceType": "ImagingStudy",
        "id": unique("iso13-study"),
        "status": "available",
        "subject": {"reference": f"Patient/{child}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{abs(hash(child))}"}],
    }
    related = {
        "resourceType": "RelatedPerson",
        "id": proxy,
        "patient": {"reference": f"Patient/{child}"},
        "active": True,
    }
    put(running, {"resourceType": "Patient", "id": child, "birthDate": "1970-01-01"}, related, study)
    app = add_client(running, "public", "patient/ImagingStudy.rs")
    token = issue(running, app, "patient/ImagingStudy.rs", patient=child, fhir_user=f"RelatedPerson/{proxy}")
    renewal = issue(
        running,
        app,
        "patient/ImagingStudy.rs",
        patient=child,
        fhir_user=f"RelatedPerson/{proxy}",
        kind="refresh",
    )
    assert get(running, "ImagingStudy", token, patient=child).json()["total"] == 1
    refreshed = _refresh(running, app, renewal)
    assert refreshed.status_code == 200, refreshed.text
    put(running, {**related, "period": {"end": "2000-01-01T00:00:00Z"}})
    assert get(running, "ImagingStudy", token, patient=child).status_code == 403
    assert get(running, f"ImagingStudy/{study['id']}", token).status_code == 404
    refused = _refresh(running, app, refreshed.json()["refresh_token"])  # the refresh is refused too
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    own = issue(running, app, "patient/ImagingStudy.rs", patient=child, fhir_user=f"Patient/{child}")
    assert get(running, "ImagingStudy", own, patient=child).json()["total"] == 1
    put(
        running,
        {
            "resourceType": "Consent",
            "id": unique("iso13-consent"),
            "status": "active",
            "patient": {"reference": f"Patient/{child}"},
            "provision": {
                "type": "deny",
                "actor": [{"reference": {"identifier": {"system": CLIENT_SYSTEM, "value": app}}}],
            },
        },
    )
    assert get(running, "ImagingStudy", own, patient=child).json()["total"] == 0


def test_iso14_sensitive_study_is_neither_shown_counted_nor_probeable(running: RunningStack) -> None:
    """ISO-14: Elena cannot find Maya's sensitive ultrasound by its UID, its label or its id: each
    answer is the one for something that does not exist."""
    token = _elena(running)
    sensitive_uid = running.seeded.study_uids["ACC-3002"]
    by_uid = get(running, "ImagingStudy", token, **_uid_query(sensitive_uid)).json()
    assert _comparable(by_uid) == _comparable(
        get(running, "ImagingStudy", token, **_uid_query(UNKNOWN_UID)).json()
    )
    for label in ("R", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R"):
        assert get(running, "ImagingStudy", token, patient="maya", _security=label).json()["total"] == 0
    hidden = get(running, f"ImagingStudy/{study_id(running, 'ACC-3002')}", token)
    unknown = get(running, "ImagingStudy/nonexistent-study", token)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"] == "not-found"


def test_iso15_clinician_launch_scopes_stay_with_the_launch_patient(running: RunningStack) -> None:
    """ISO-15: Dr. Chen, launched on Alice, cannot use the patient/ scopes on Bob (whom her user
    access reaches); her user/ scopes cannot reach a patient outside her hospital; and there is no
    break-the-glass: no parameter or header reveals a restricted study."""
    launched = issue(
        running, "demo-app", "patient/ImagingStudy.rs", patient="alice", fhir_user="Practitioner/dr-chen"
    )
    assert get(running, "ImagingStudy", launched, patient="alice").json()["total"] == 4
    assert get(running, "ImagingStudy", launched, patient="bob").status_code == 403
    assert get(running, f"ImagingStudy/{study_id(running, 'ACC-2001')}", launched).status_code == 404
    outsider = unique("iso15-outsider")
    put(running, {"resourceType": "Patient", "id": outsider, "birthDate": "1980-01-01"})
    user = issue(running, "demo-app", "user/ImagingStudy.rs", fhir_user="Practitioner/dr-chen")
    assert get(running, "ImagingStudy", user, patient=outsider).status_code == 403
    restricted = f"{running.fhir_base}/ImagingStudy/{study_id(running, 'ACC-3002')}"
    for extra in ({"purposeOfUse": "ETREAT"}, {"_security": "BTG"}):
        answer = httpx.get(restricted, params=extra, headers={**_bearer(user), "X-Purpose-Of-Use": "ETREAT"})
        assert answer.status_code == 404


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_iso16_backend_read_only_token_cannot_write(running: RunningStack, method: str) -> None:
    """ISO-16 (FHIR): a backend token with ``system/ImagingStudy.rs`` only cannot store a study:
    403 ``insufficient_scope``; a backend token without any ImagingStudy scope cannot read one."""
    token = issue(running, "quality-review", "system/ImagingStudy.rs")
    study = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/alice"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UNKNOWN_UID}.1"}],
    }
    params = _uid_query(f"{UNKNOWN_UID}.1") if method == "PUT" else None
    answer = httpx.request(
        method,
        f"{running.fhir_base}/ImagingStudy",
        params=params,
        json=study,
        headers={**_bearer(token), "Content-Type": "application/fhir+json"},
    )
    assert answer.status_code == 403
    assert 'error="insufficient_scope"' in answer.headers["www-authenticate"]
    assert get(running, "ImagingStudy", token, **_uid_query(f"{UNKNOWN_UID}.1")).json()["total"] == 0
    other = issue(running, "quality-review", "system/Patient.rs")
    refused = get(running, "ImagingStudy", other, patient="alice")
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]


def _refresh(running: RunningStack, client_id: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{running.stack.ehr_settings.origin}/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id},
    )


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
