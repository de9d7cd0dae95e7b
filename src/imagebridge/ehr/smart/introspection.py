"""Token introspection (RFC 7662; SMART App Launch 2.2 "Token Introspection").

Callers authenticate with their own bearer token carrying the ``introspection`` scope (SMART 2.2
allows access control "by providing an appropriately-scoped SMART App or SMART Backend Service
bearer token"). Inactive tokens get exactly ``{"active": false}`` (RFC 7662 §2.2).

Beyond SMART's members, the answer carries ``aud`` (every resource server the token is valid
at) and the imaging grant under :data:`IMAGING_GRANT`: for a patient-context token, the patient
and the Study Instance UIDs the policy permits; for other tokens, ``{"mode": "query"}``, telling
the imaging system to ask the FHIR API per study with the caller's token.
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
from imagebridge.ehr.policy.engine import Principal
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.oauth_errors import OAuthError, no_store_json

#: The scope a resource server's token needs to call this endpoint.
INTROSPECTION_SCOPE = "introspection"
#: RFC 7662 §2.2 service-specific member carrying the imaging grant.
IMAGING_GRANT = "urn:imagebridge:imaging-grant"
DICOM_UID_SYSTEM = "urn:dicom:uid"

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
    body[IMAGING_GRANT] = await ctx.memo.imaging_grant(
        generation, principal, lambda: imaging_grant(ctx, principal)
    )
    return no_store_json(body)


async def imaging_grant(ctx: EhrContext, principal: Principal) -> dict[str, Any]:
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
