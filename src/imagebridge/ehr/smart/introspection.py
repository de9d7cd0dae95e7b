"""Token introspection (RFC 7662; SMART App Launch 2.2 "Token Introspection").

Callers authenticate with their own bearer token carrying the ``introspection`` scope (SMART 2.2
allows access control "by providing an appropriately-scoped SMART App or SMART Backend Service
bearer token"). Inactive tokens get exactly ``{"active": false}`` (RFC 7662 §2.2).

Beyond SMART's members, the answer carries ``aud`` (every resource server the token is valid
at) and the imaging grant under :data:`IMAGING_GRANT`: for a patient-context token, the patient
and the Study Instance UIDs the policy permits; for other tokens, ``{"mode": "query"}``, telling
the imaging system to ask the FHIR API per study with the caller's token.

For a token with a scope to create ImagingStudy, the grant's ``write`` member says for whom it may
store imaging (STOW-RS; security.md ISO-08, docs/gate.md "Writing"): ``{"mode": "any"}`` for a
client registered as an imaging source; ``{"mode": "mrns", "mrns": [...]}`` for a token writing
only at patient level (the MRNs of the patient in context, if the policy lets it write there);
otherwise ``{"mode": "ask"}``. The imaging system then asks per DICOM PatientID with the extra
request parameter :data:`WRITE_PATIENT` (RFC 7662 §2.1 allows such parameters) and gets
``{"mode": "ask", "patient_id": ..., "allowed": true|false}``: the PatientID is matched to a
Patient by the MRN system, as the publisher's studies are, and the policy engine decides
(:meth:`~imagebridge.ehr.policy.engine.PolicyEngine.may_write`). A PatientID matching no Patient,
or several, is refused.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import bearer_challenge
from imagebridge.common.smart_scopes import covers_imaging_read
from imagebridge.ehr.bearer import Unauthenticated, authenticate, principal_for
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.store import Query, TokenCriterion
from imagebridge.ehr.fhir.subjects import by_identifier
from imagebridge.ehr.policy.engine import Principal
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.oauth_errors import OAuthError, no_store_json

#: The scope a resource server's token needs to call this endpoint.
INTROSPECTION_SCOPE = "introspection"
#: RFC 7662 §2.2 service-specific member carrying the imaging grant.
IMAGING_GRANT = "urn:imagebridge:imaging-grant"
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: Introspection request parameter: the DICOM PatientID a write decision is asked for.
WRITE_PATIENT = "imaging_write_patient"

INACTIVE: dict[str, Any] = {"active": False}


async def introspection_endpoint(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    generation = await ctx.memo.generation(ctx.engine)  # before anything it guards is read
    try:
        caller = await authenticate(ctx, request, generation)
    except Unauthenticated as exc:
        return bearer_challenge(exc.error or "invalid_token", exc.description)
    if INTROSPECTION_SCOPE not in caller.principal.scopes.others:
        return bearer_challenge("insufficient_scope", "the introspection scope is required", status=403)
    try:
        form = await read_form(request)
    except OAuthError as exc:
        return exc.response()
    token = form.get("token", "")
    found = await ctx.memo.token(generation, token, ctx.grants.lookup_with_client) if token else None
    if found is None or not found[0].active():
        return no_store_json(INACTIVE)
    grant = found[0]
    try:
        principal = principal_for(*found)
    except Unauthenticated:
        return no_store_json(INACTIVE)
    body: dict[str, Any] = {
        "active": True,
        "scope": grant.scope,
        "client_id": grant.client_id,
        "exp": int(grant.expires_at),
        "iat": int(grant.issued_at),
        "token_type": "Bearer",
        "aud": ctx.audiences,
        "iss": ctx.settings.fhir_base,
    }
    if grant.sub:
        body["sub"] = grant.sub
    if grant.fhir_user:
        body["fhirUser"] = f"{ctx.settings.fhir_base}/{grant.fhir_user}"  # as in the id_token
    if grant.patient:
        body["patient"] = grant.patient
    body.update({k: v for k, v in grant.context.items() if k not in body})
    imaging = await ctx.memo.imaging_grant(generation, principal, lambda: imaging_grant(ctx, principal))
    asked = form.get(WRITE_PATIENT)
    if asked is not None and "write" in imaging:  # the one part that depends on the request
        imaging = {**imaging, "write": await write_grant(ctx, principal, asked)}
    body[IMAGING_GRANT] = imaging
    return no_store_json(body)


async def imaging_grant(ctx: EhrContext, principal: Principal) -> dict[str, Any]:
    """The imaging-grant member: what may be released and, for writers, for whom they may store
    (remembered with it: the answer when no PatientID is asked)."""
    released = await _released(ctx, principal)
    write = await write_grant(ctx, principal, None)
    return released if write is None else {**released, "write": write}


async def _released(ctx: EhrContext, principal: Principal) -> dict[str, Any]:
    """What the imaging system may release under this authorization (criterion f, channel 2)."""
    if not principal.patient:
        return {"mode": "query"}
    if not covers_imaging_read(principal.scopes, "patient"):
        return {"mode": "studies", "patient": principal.patient, "studies": []}
    query = Query(
        "ImagingStudy",
        [TokenCriterion("patient", ((None, f"Patient/{principal.patient}"),))],
        count=10_000,
    )
    studies = await ctx.store.find(query)
    uids: list[str] = []
    for study in await ctx.policy.visible(principal, studies):
        uids.extend(
            ident["value"].removeprefix("urn:oid:")
            for ident in study.get("identifier", [])
            if ident.get("system") == DICOM_UID_SYSTEM and isinstance(ident.get("value"), str)
        )
    return {"mode": "studies", "patient": principal.patient, "studies": sorted(uids)}


async def write_grant(ctx: EhrContext, principal: Principal, asked: str | None) -> dict[str, Any] | None:
    """For whom this authorization may store imaging, or the answer for the PatientID ``asked``;
    None without a scope to create ImagingStudy (see the module docstring)."""
    levels = {s.level for s in principal.scopes.allows(principal.levels, "ImagingStudy", "c")}
    if not levels:
        return None
    if principal.imaging_source:
        return {"mode": "any"}
    mrn_system = ctx.settings.mrn_system
    if levels == {"patient"}:  # missing patient context reaches no one, never everyone
        patient = await ctx.store.read("Patient", principal.patient) if principal.patient else None
        mrns: list[str] = []
        if (
            patient is not None
            and (await ctx.policy.may_write(principal, "ImagingStudy", patient["id"])).allowed
        ):
            mrns = sorted(
                str(ident["value"])
                for ident in patient.get("identifier") or []
                if ident.get("system") == mrn_system and ident.get("value")
            )
        return {"mode": "mrns", "mrns": mrns}
    if asked is None:
        return {"mode": "ask"}
    found = await by_identifier(ctx, "Patient", {"system": mrn_system, "value": asked}) if asked else None
    allowed = (
        found is not None and (await ctx.policy.may_write(principal, "ImagingStudy", found["id"])).allowed
    )
    return {"mode": "ask", "patient_id": asked, "allowed": allowed}
