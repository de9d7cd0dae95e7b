"""Reconciling references given by identifier (FHIR R4 §2.3.0 "Logical references").

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
    if resource.get("resourceType") == "AuditEvent":
        return await _resolve_entities(ctx, resource)
    subject = resource.get("subject")
    if not isinstance(subject, dict) or subject.get("reference"):
        return resource
    found = await by_identifier(ctx, "Patient", subject.get("identifier"))
    if found is not None:
        return {**resource, "subject": {**subject, "reference": f"Patient/{found['id']}"}}
    return resource


async def by_identifier(ctx: EhrContext, resource_type: str, identifier: Any) -> dict[str, Any] | None:
    """The one ``resource_type`` with ``identifier`` (None when no or several resources have it)."""
    if not isinstance(identifier, dict) or not identifier.get("value"):
        return None
    query = Query(
        resource_type,
        [TokenCriterion("identifier", ((str(identifier.get("system", "")), str(identifier["value"])),))],
        count=2,
    )
    found = await ctx.store.find(query)  # two at most, no count: one is the answer, two are none
    return found[0] if len(found) == 1 else None


async def _resolve_entities(ctx: EhrContext, event: dict[str, Any]) -> dict[str, Any]:
    """An AuditEvent from the imaging system names its patient by MRN and its study by
    ``urn:dicom:uid``: each becomes a reference, so the event joins the patient's access report
    (security.md AU-07); whoever may not see the study does not see the event either (AU-09)."""
    entities = []
    for entity in event.get("entity") or []:
        what = entity.get("what") if isinstance(entity, dict) else None
        if isinstance(what, dict) and not what.get("reference") and isinstance(what.get("identifier"), dict):
            dicom = what["identifier"].get("system") == "urn:dicom:uid"
            found = await by_identifier(ctx, "ImagingStudy" if dicom else "Patient", what["identifier"])
            if found is not None:
                entity = {**entity, "what": {**what, "reference": f"{found['resourceType']}/{found['id']}"}}
        entities.append(entity)
    return {**event, "entity": entities}
