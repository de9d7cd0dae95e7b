"""Reconciling a written resource's subject given by identifier (FHIR R4 §2.3.0 "Logical references").

The imaging system knows only the DICOM PatientID, so it publishes studies with
``subject.identifier`` (the MRN). The EHR resolves that to ``Patient/<id>``; when no patient has
the identifier the study is kept unreconciled: it has no ``subject.reference`` and the policy
engine lets no one see it until an administrator links it.
"""

from __future__ import annotations

from typing import Any

from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.store import Query, TokenCriterion


async def resolve_subject(ctx: EhrContext, resource: dict[str, Any]) -> dict[str, Any]:
    subject = resource.get("subject")
    if not isinstance(subject, dict) or subject.get("reference"):
        return resource
    identifier = subject.get("identifier")
    if not isinstance(identifier, dict) or not identifier.get("value"):
        return resource
    query = Query(
        "Patient",
        [TokenCriterion("identifier", ((str(identifier.get("system", "")), str(identifier["value"])),))],
        count=2,
    )
    patients, _ = await ctx.store.search(query)
    if len(patients) == 1:
        return {**resource, "subject": {**subject, "reference": f"Patient/{patients[0]['id']}"}}
    return resource
