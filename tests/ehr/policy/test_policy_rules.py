"""Each policy rule on its own small world (ARCHITECTURE.md "Policy"; security.md ISO-12..15):
clinicians by organization and CareTeam with the restricted-access role, proxies (period,
adolescent sensitivity codes), Consent per app and for all apps, unreconciled studies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, get, issue, put, study, unique

from imagebridge.ehr.policy.consent import CLIENT_SYSTEM
from imagebridge.ehr.policy.labels import ACT_CODE, CONFIDENTIALITY
from imagebridge.ehr.policy.relationships import RESTRICTED_ACCESS_ROLE

PAT = "patient/ImagingStudy.rs"
USER = "user/ImagingStudy.rs"


@dataclass
class World:
    running: RunningStack
    ids: dict[str, str]
    app: str  # a public client some consents name


@pytest.fixture(scope="module")
def world(running: RunningStack) -> World:
    n = {
        k: unique(k)
        for k in (
            "org",
            "adult",
            "other",
            "teen",
            "s-ct",
            "s-r",
            "s-dx",
            "s-teen",
            "s-psy",
            "s-unrec",
            "dr-a",
            "dr-r",
            "dr-b",
            "rp-teen",
            "rp-ended",
            "rp-adult",
            "s-other2",
        )
    }
    teen_born = date.today().replace(year=date.today().year - 15).isoformat()
    app = add_client(running, "public", "patient/*.rs user/*.rs")
    r = {"system": CONFIDENTIALITY, "code": "R"}
    psy = {"system": ACT_CODE, "code": "PSY"}
    unreconciled = study(n["s-unrec"], n["adult"], "CT")
    unreconciled["subject"] = {"identifier": {"system": "urn:imagebridge:mrn", "value": "NOBODY"}}
    put(
        running,
        {"resourceType": "Organization", "id": n["org"], "name": "Test clinic"},
        {
            "resourceType": "Patient",
            "id": n["adult"],
            "birthDate": "1970-01-01",
            "managingOrganization": {"reference": f"Organization/{n['org']}"},
        },
        {"resourceType": "Patient", "id": n["other"], "birthDate": "1971-01-01"},
        {"resourceType": "Patient", "id": n["teen"], "birthDate": teen_born},
        study(n["s-ct"], n["adult"], "CT"),
        study(n["s-r"], n["adult"], "MR", [r]),
        study(n["s-dx"], n["other"], "DX"),
        study(n["s-other2"], n["other"], "CT"),
        study(n["s-teen"], n["teen"], "DX"),
        study(n["s-psy"], n["teen"], "MR", [psy]),
        unreconciled,
        {"resourceType": "Practitioner", "id": n["dr-a"]},
        {"resourceType": "Practitioner", "id": n["dr-r"]},
        {"resourceType": "Practitioner", "id": n["dr-b"]},
        {
            "resourceType": "PractitionerRole",
            "id": unique("role"),
            "active": True,
            "practitioner": {"reference": f"Practitioner/{n['dr-a']}"},
            "organization": {"reference": f"Organization/{n['org']}"},
        },
        {
            "resourceType": "PractitionerRole",
            "id": unique("role"),
            "active": True,
            "practitioner": {"reference": f"Practitioner/{n['dr-r']}"},
            "organization": {"reference": f"Organization/{n['org']}"},
            "code": [{"coding": [{"system": RESTRICTED_ACCESS_ROLE[0], "code": RESTRICTED_ACCESS_ROLE[1]}]}],
        },
        {
            "resourceType": "CareTeam",
            "id": unique("team"),
            "status": "active",
            "subject": {"reference": f"Patient/{n['other']}"},
            "participant": [{"member": {"reference": f"Practitioner/{n['dr-b']}"}}],
        },
        {
            "resourceType": "RelatedPerson",
            "id": n["rp-teen"],
            "active": True,
            "patient": {"reference": f"Patient/{n['teen']}"},
        },
        {
            "resourceType": "RelatedPerson",
            "id": n["rp-ended"],
            "active": True,
            "patient": {"reference": f"Patient/{n['teen']}"},
            "period": {"end": "2020-01-01"},
        },
        {
            "resourceType": "RelatedPerson",
            "id": n["rp-adult"],
            "active": True,
            "patient": {"reference": f"Patient/{n['adult']}"},
        },
        # The "other" patient withholds one study from every app, and all imaging from `app`.
        {
            "resourceType": "Consent",
            "id": unique("consent"),
            "status": "active",
            "patient": {"reference": f"Patient/{n['other']}"},
            "provision": {
                "type": "permit",
                "provision": [
                    {
                        "type": "deny",
                        "data": [
                            {
                                "meaning": "instance",
                                "reference": {"reference": f"ImagingStudy/{n['s-other2']}"},
                            }
                        ],
                    },
                ],
            },
        },
        {
            "resourceType": "Consent",
            "id": unique("consent"),
            "status": "active",
            "patient": {"reference": f"Patient/{n['other']}"},
            "provision": {
                "type": "deny",
                "actor": [{"reference": {"identifier": {"system": CLIENT_SYSTEM, "value": app}}}],
                "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "ImagingStudy"}],
            },
        },
        {
            "resourceType": "Consent",
            "id": unique("consent"),
            "status": "inactive",
            "patient": {"reference": f"Patient/{n['adult']}"},
            "provision": {"type": "deny"},
        },
    )
    return World(running, n, app)


def _seen(world: World, scope: str, **context: str | None) -> set[str]:
    token = issue(world.running, "demo-app", scope, **context)  # type: ignore[arg-type]
    bundle = get(world.running, "ImagingStudy", token, _count="100").json()
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_clinician_by_organization_without_role_misses_restricted(world: World) -> None:
    n = world.ids
    assert _seen(world, USER, fhir_user=f"Practitioner/{n['dr-a']}") == {n["s-ct"]}


def test_clinician_with_restricted_access_role(world: World) -> None:
    n = world.ids
    assert _seen(world, USER, fhir_user=f"Practitioner/{n['dr-r']}") == {
        n["s-ct"],
        n["s-r"],
    }


def test_clinician_by_care_team_and_consent_for_all_apps(world: World) -> None:
    n = world.ids
    assert _seen(world, USER, fhir_user=f"Practitioner/{n['dr-b']}") == {n["s-dx"]}


def test_clinician_patient_outside_access_is_403(world: World) -> None:
    n = world.ids
    token = issue(world.running, "demo-app", "user/ImagingStudy.rs", fhir_user=f"Practitioner/{n['dr-b']}")
    assert get(world.running, "ImagingStudy", token, patient=n["adult"]).status_code == 403


def test_proxy_of_adolescent_misses_sensitivity_codes(world: World) -> None:
    n = world.ids
    seen = _seen(
        world, "patient/ImagingStudy.rs", patient=n["teen"], fhir_user=f"RelatedPerson/{n['rp-teen']}"
    )
    assert seen == {n["s-teen"]}
    assert _seen(world, PAT, patient=n["teen"]) == {n["s-teen"], n["s-psy"]}


def test_proxy_of_adult_sees_labeled_studies(world: World) -> None:
    n = world.ids
    seen = _seen(
        world, "patient/ImagingStudy.rs", patient=n["adult"], fhir_user=f"RelatedPerson/{n['rp-adult']}"
    )
    assert seen == {n["s-ct"], n["s-r"]}


def test_ended_proxy_sees_nothing(world: World) -> None:
    """ISO-13: a proxy link whose period is over grants nothing, even with a live token."""
    n = world.ids
    seen = _seen(
        world, "patient/ImagingStudy.rs", patient=n["teen"], fhir_user=f"RelatedPerson/{n['rp-ended']}"
    )
    assert seen == set()


def test_consent_withholds_all_imaging_from_one_app(world: World) -> None:
    n = world.ids
    mine = issue(world.running, world.app, "patient/ImagingStudy.rs", patient=n["other"])
    assert get(world.running, "ImagingStudy", mine).json()["total"] == 0
    assert _seen(world, PAT, patient=n["other"]) == {n["s-dx"]}


def test_unreconciled_study_is_visible_to_no_one(world: World) -> None:
    n = world.ids
    for scope, context in (
        ("patient/ImagingStudy.rs", {"patient": n["adult"]}),
        ("user/ImagingStudy.rs", {"fhir_user": f"Practitioner/{n['dr-r']}"}),
    ):
        assert n["s-unrec"] not in _seen(world, scope, **context)
    token = issue(world.running, "demo-app", "patient/ImagingStudy.rs", patient=n["adult"])
    assert get(world.running, f"ImagingStudy/{n['s-unrec']}", token).status_code == 404
