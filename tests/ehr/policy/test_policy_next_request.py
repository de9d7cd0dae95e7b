"""A worker reuses a principal's policy view between requests (PolicyEngine.view with the resource
change counter), yet a change to the policy's data applies to the very next request of a live
token: a new Consent, a new label, an ended proxy link (docs/policy.md "Tokens already issued")."""

from __future__ import annotations

from datetime import date

from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import get, issue, put, study, unique

from imagebridge.ehr.policy.labels import ACT_CODE


def test_policy_changes_apply_to_the_next_request(running: RunningStack) -> None:
    teen, proxy = unique("teen"), unique("rp")
    first, second = unique("s"), unique("s")
    born = date.today().replace(year=date.today().year - 15, day=1).isoformat()
    related = {
        "resourceType": "RelatedPerson",
        "id": proxy,
        "active": True,
        "patient": {"reference": f"Patient/{teen}"},
    }
    put(
        running,
        {"resourceType": "Patient", "id": teen, "birthDate": born},
        related,
        study(first, teen),
        study(second, teen),
    )
    token = issue(
        running, "demo-app", "patient/ImagingStudy.rs", patient=teen, fhir_user=f"RelatedPerson/{proxy}"
    )

    def seen() -> set[str] | int:
        response = get(running, "ImagingStudy", token, patient=teen)
        if response.status_code != 200:
            return response.status_code
        return {e["resource"]["id"] for e in response.json()["entry"]}

    assert seen() == {first, second}
    assert seen() == {first, second}  # the worker's view is reused: same answer
    put(running, study(second, teen, labels=[{"system": ACT_CODE, "code": "PSY"}]))
    assert seen() == {first}  # sensitive now: hidden from the proxy of an adolescent
    put(
        running,
        {
            "resourceType": "Consent",
            "id": unique("consent"),
            "status": "active",
            "patient": {"reference": f"Patient/{teen}"},
            "provision": {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": f"ImagingStudy/{first}"}}],
            },
        },
    )
    assert seen() == set()
    put(running, {**related, "active": False})
    assert seen() == 403  # no longer a proxy: the patient is outside the authorization
