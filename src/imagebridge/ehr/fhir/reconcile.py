"""Unreconciled studies: listing them and linking one to its patient (ARCHITECTURE.md "Publishing").

A study published with a DICOM PatientID that matches no ``Patient.identifier`` has no
``subject.reference``; the policy engine shows it to no one until an administrator links it
(``imagebridge ehr studies unreconciled`` / ``imagebridge ehr studies link``). Linking never moves
a study that already belongs to a patient.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from imagebridge.ehr.fhir.store import Query, ResourceConflict, Store, TokenCriterion
from imagebridge.ehr.tables import resources, search_tokens

DICOM_UID = "urn:dicom:uid"


class NotFound(LookupError):
    """The study or the patient does not exist."""


async def unreconciled(store: Store) -> list[dict[str, Any]]:
    """Every ImagingStudy without a patient, oldest first."""
    linked = select(search_tokens.c.id).where(
        search_tokens.c.resource_type == "ImagingStudy", search_tokens.c.param == "patient"
    )
    found, _ = await store.search(
        Query("ImagingStudy", count=100_000, sort=(("_lastUpdated", False),)),
        restrict=resources.c.id.not_in(linked),
    )
    return found


async def link(store: Store, study_uid: str, patient_ref: str) -> dict[str, Any]:
    """Give the study with ``study_uid`` the subject ``Patient/<id>``."""
    kind, _, patient_id = patient_ref.partition("/")
    if kind != "Patient" or not patient_id or await store.read("Patient", patient_id) is None:
        raise NotFound(f"no patient {patient_ref!r}")
    studies, _ = await store.search(
        Query("ImagingStudy", [TokenCriterion("identifier", ((DICOM_UID, f"urn:oid:{study_uid}"),))], count=2)
    )
    if len(studies) != 1:
        raise NotFound(f"no study with UID {study_uid}")
    study = studies[0]
    subject = study.get("subject") or {}
    if subject.get("reference") not in (None, patient_ref):
        raise ResourceConflict(f"the study already belongs to {subject['reference']}")
    stored, _ = await store.put({**study, "subject": {**subject, "reference": patient_ref}})
    return stored


def describe(study: dict[str, Any]) -> str:
    """One line for an administrator: UID, accession, the unmatched patient identifier, updated."""
    uid = next(
        (
            str(i["value"]).removeprefix("urn:oid:")
            for i in study.get("identifier", [])
            if i.get("system") == DICOM_UID
        ),
        "?",
    )
    accession = next(
        (str(i.get("value")) for i in study.get("identifier", []) if i.get("system") != DICOM_UID), ""
    )
    ident = (study.get("subject") or {}).get("identifier") or {}
    mrn = f"{ident.get('system', '')}|{ident.get('value', '')}"
    return f"{uid}\t{accession}\t{mrn}\t{study.get('meta', {}).get('lastUpdated', '')}"
