"""The demo hospital: people, clients and studies after the Argonaut SMART Imaging worked examples.

Alice and Bob are adults with their own studies; Maya is 16, with an ankle X-ray and a pelvic
ultrasound labeled sensitive; Elena is Maya's parent (a proxy, as a RelatedPerson); Dr. Chen is a
clinician; ``quality-review`` is a backend service pre-authorized for a Group (Alice's cohort).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from imagebridge.apps.synthetic import PatientSpec, StudySpec

MRN_SYSTEM = "urn:imagebridge:mrn"


@dataclass(frozen=True)
class Person:
    fhir_id: str
    mrn: str
    given: str
    family: str
    birth_date: str  # FHIR date
    gender: str

    @property
    def spec(self) -> PatientSpec:
        return PatientSpec(
            patient_id=self.mrn,
            name=f"{self.family}^{self.given}",
            birth_date=self.birth_date.replace("-", ""),
            sex={"female": "F", "male": "M"}.get(self.gender, "O"),
        )


ALICE = Person("alice", "MRN-1001", "Alice", "Anders", "1980-04-12", "female")
BOB = Person("bob", "MRN-1002", "Bob", "Baker", "1975-09-30", "male")
MAYA = Person("maya", "MRN-1003", "Maya", "Moreno", "2010-06-02", "female")
PATIENTS = (ALICE, BOB, MAYA)

#: The sensitive study label (HL7 v3 Confidentiality "restricted").
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


def studies(scale: float = 1.0) -> list[tuple[StudySpec, bool]]:
    """Every demo study and whether it is sensitive. ``scale`` < 1 shrinks images (for tests)."""

    def px(n: int) -> int:
        return max(32, int(n * scale))

    ct_slices = 120 if scale >= 1 else 24

    return [
        (
            StudySpec(
                ALICE.spec,
                "CT",
                "CT chest with contrast",
                "CHEST",
                "20240312",
                accession_number="ACC-1001",
                instances_per_series=ct_slices,
                rows=px(512),
                columns=px(512),
                seed=1,
            ),
            False,
        ),
        (
            StudySpec(
                ALICE.spec,
                "MR",
                "MR brain without contrast",
                "HEAD",
                "20240520",
                accession_number="ACC-1002",
                series_count=2,
                instances_per_series=12,
                rows=px(256),
                columns=px(256),
                seed=2,
            ),
            False,
        ),
        (
            StudySpec(
                ALICE.spec,
                "CR",
                "CR chest PA and lateral",
                "CHEST",
                "20231104",
                accession_number="ACC-1003",
                series_count=2,
                rows=px(1024),
                columns=px(1024),
                seed=3,
            ),
            False,
        ),
        (
            StudySpec(
                ALICE.spec,
                "MR",
                "Cardiac MR",
                "HEART",
                "20240901",
                accession_number="ACC-1004",
                instances_per_series=10,
                rows=px(256),
                columns=px(256),
                seed=4,
            ),
            False,
        ),
        (
            StudySpec(
                BOB.spec,
                "DX",
                "XR knee 2 views",
                "KNEE",
                "20240115",
                accession_number="ACC-2001",
                series_count=1,
                instances_per_series=2,
                rows=px(1024),
                columns=px(768),
                seed=5,
            ),
            False,
        ),
        (
            StudySpec(
                BOB.spec,
                "CT",
                "CT head without contrast",
                "HEAD",
                "20240702",
                accession_number="ACC-2002",
                instances_per_series=20,
                rows=px(512),
                columns=px(512),
                seed=6,
            ),
            False,
        ),
        (
            StudySpec(
                MAYA.spec,
                "DX",
                "XR ankle 3 views",
                "ANKLE",
                "20240818",
                accession_number="ACC-3001",
                instances_per_series=3,
                rows=px(1024),
                columns=px(768),
                seed=7,
            ),
            False,
        ),
        (
            StudySpec(
                MAYA.spec,
                "US",
                "US pelvis",
                "PELVIS",
                "20241002",
                accession_number="ACC-3002",
                instances_per_series=2,
                frames=8,
                rows=px(480),
                columns=px(640),
                seed=8,
            ),
            True,
        ),
    ]


def fhir_resources() -> Iterator[dict[str, Any]]:
    """Patients, the proxy, the clinician, the organization and the backend cohort."""
    yield {
        "resourceType": "Organization",
        "id": "general-hospital",
        "name": "General Hospital",
        "active": True,
    }
    for p in PATIENTS:
        yield {
            "resourceType": "Patient",
            "id": p.fhir_id,
            "identifier": [
                {
                    "system": MRN_SYSTEM,
                    "value": p.mrn,
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                }
            ],
            "name": [{"family": p.family, "given": [p.given]}],
            "birthDate": p.birth_date,
            "gender": p.gender,
            "managingOrganization": {"reference": "Organization/general-hospital"},
        }
    yield {
        "resourceType": "RelatedPerson",
        "id": "elena",
        "patient": {"reference": "Patient/maya"},
        "relationship": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]}
        ],
        "name": [{"family": "Moreno", "given": ["Elena"]}],
        "active": True,
    }
    yield {
        "resourceType": "Practitioner",
        "id": "dr-chen",
        "name": [{"family": "Chen", "given": ["Lin"], "prefix": ["Dr."]}],
    }
    yield {  # Dr. Chen works for the hospital: she sees its patients, but not restricted studies
        "resourceType": "PractitionerRole",
        "id": "dr-chen-general-hospital",
        "active": True,
        "practitioner": {"reference": "Practitioner/dr-chen"},
        "organization": {"reference": "Organization/general-hospital"},
        "code": [{"text": "Physician"}],
    }
    yield {
        "resourceType": "Group",
        "id": "quality-review",
        "type": "person",
        "actual": True,
        "name": "Cardiac imaging quality review cohort",
        "member": [{"entity": {"reference": "Patient/alice"}}],
    }


def diagnostic_report(study: dict[str, Any]) -> dict[str, Any] | None:
    """The radiology report of a published demo study (USCDI Diagnostic Imaging Reference, spec.md §4.1):
    linked by ``imagingStudy`` and by the accession number, carrying the study's security labels."""
    accession = next(
        (i["value"] for i in study.get("identifier", []) if i.get("system") != "urn:dicom:uid"), None
    )
    if accession is None or "reference" not in study.get("subject", {}):
        return None
    return {
        "resourceType": "DiagnosticReport",
        "id": f"report-{accession.lower()}",
        "meta": {"security": study.get("meta", {}).get("security", [])},
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}
        ],
        "code": {"text": study.get("description", "Imaging report")},
        "subject": study["subject"],
        "issued": f"{study.get('started', '2024-01-01')[:10]}T18:00:00Z",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": accession,
            }
        ],
        "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}],
        "conclusion": f"{study.get('description', 'Study')}: no acute findings.",
    }


BACKEND_SCOPE = "system/ImagingStudy.rs system/Patient.rs system/DiagnosticReport.rs"
MODALITY_SCOPE = "system/ImagingStudy.c"


@dataclass(frozen=True)
class DemoUser:
    """A person who signs in to the EHR (demo passwords; never use them outside the demo)."""

    username: str
    password: str
    fhir_user: str
    display_name: str
    role: str  # patient | proxy | clinician


USERS = (
    DemoUser("alice", "alice-demo-2024", "Patient/alice", "Alice Anders", "patient"),
    DemoUser("bob", "bob-demo-2024", "Patient/bob", "Bob Baker", "patient"),
    DemoUser("maya", "maya-demo-2024", "Patient/maya", "Maya Moreno", "patient"),
    DemoUser("elena", "elena-demo-2024", "RelatedPerson/elena", "Elena Moreno", "proxy"),
    DemoUser("dr-chen", "chen-demo-2024", "Practitioner/dr-chen", "Dr. Lin Chen", "clinician"),
)
