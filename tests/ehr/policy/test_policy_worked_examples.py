"""The Argonaut SMART Imaging worked examples (IG "Authorization patterns") against the seeded
demo hospital, on SQLite and PostgreSQL: proxy with the adolescent rule, and the quality-review
backend limited to its cohort."""

from __future__ import annotations

from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import accessions, get, issue, study_id


def _proxy_token(running: RunningStack) -> str:
    return issue(
        running, "demo-app", "patient/ImagingStudy.rs", patient="maya", fhir_user="RelatedPerson/elena"
    )


def test_elena_sees_the_ankle_not_the_sensitive_ultrasound(running: RunningStack) -> None:
    token = _proxy_token(running)
    bundle = get(running, "ImagingStudy", token, patient="maya", _include="ImagingStudy:endpoint").json()
    assert accessions(bundle) == {"ACC-3001"}
    assert bundle["total"] == 1
    assert get(running, f"ImagingStudy/{study_id(running, 'ACC-3002')}", token).status_code == 404
    assert get(running, f"ImagingStudy/{study_id(running, 'ACC-3001')}", token).status_code == 200


def test_maya_herself_sees_the_ultrasound(running: RunningStack) -> None:
    token = issue(running, "demo-app", "patient/ImagingStudy.rs", patient="maya", fhir_user="Patient/maya")
    bundle = get(running, "ImagingStudy", token, patient="maya").json()
    assert accessions(bundle) == {"ACC-3001", "ACC-3002"}


def test_proxy_cannot_switch_patient(running: RunningStack) -> None:
    """ISO-12: the patient parameter never switches context."""
    token = _proxy_token(running)
    assert get(running, "ImagingStudy", token, patient="alice").status_code == 403
    assert get(running, "Patient/alice", token).status_code == 403  # no Patient scope at all
    # Without a patient parameter, a patient-context token is restricted to its patient.
    assert accessions(get(running, "ImagingStudy", token).json()) == {"ACC-3001"}


def test_quality_review_sees_its_cohort_not_the_knee(running: RunningStack) -> None:
    token = issue(running, "quality-review", "system/ImagingStudy.rs")
    cohort = accessions(get(running, "ImagingStudy", token, patient="alice").json())
    assert "ACC-1004" in cohort  # the cardiac MR
    knee = running.seeded.study_uids["ACC-2001"]
    by_uid = get(running, "ImagingStudy", token, identifier=f"urn:dicom:uid|urn:oid:{knee}").json()
    assert by_uid["total"] == 0
    assert not by_uid.get("entry")
    assert get(running, "ImagingStudy", token, patient="bob").status_code == 403
    assert get(running, f"ImagingStudy/{study_id(running, 'ACC-2001')}", token).status_code == 404


def test_dr_chen_sees_the_hospital_but_not_restricted_studies(running: RunningStack) -> None:
    token = issue(running, "demo-app", "user/ImagingStudy.rs", fhir_user="Practitioner/dr-chen")
    seen = accessions(get(running, "ImagingStudy", token, _count="200").json())
    assert {"ACC-1004", "ACC-2001", "ACC-3001"} <= seen
    assert "ACC-3002" not in seen
