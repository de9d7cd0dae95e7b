"""Bearer-token authentication of requests to the EHR's own APIs (RFC 6750 §2.1, §3).

Tokens are accepted only in the ``Authorization`` header (never in the query string, RFC 6750
§2.3 is not supported by design: security.md RS-02).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from imagebridge.common.smart_scopes import InvalidScope, parse_scopes
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.policy.engine import Principal
from imagebridge.ehr.smart.clients import Client, backend_service
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.smart.memo import Generation


class Unauthenticated(Exception):
    """No usable bearer token: answer 401 with a Bearer challenge."""

    def __init__(self, error: str | None, description: str = "") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Authenticated:
    grant: Grant
    principal: Principal


def bearer_token(request: Request) -> str | None:
    """The token of a single ``Authorization: Bearer`` header; raises on malformed headers."""
    values = request.headers.getlist("authorization")
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("invalid_request", "more than one Authorization header")
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Unauthenticated("invalid_token", "expected 'Authorization: Bearer <token>'")
    return token


async def authenticate(
    ctx: EhrContext, request: Request, generation: Generation | None = None
) -> Authenticated:
    """The active grant and principal behind the request's bearer token (remembered by this worker
    under ``generation`` when given: :mod:`imagebridge.ehr.smart.memo`)."""
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated(None, "a bearer token is required")
    found = await ctx.memo.token(generation, token, ctx.grants.lookup_with_client)
    if found is None or not found[0].active():
        raise Unauthenticated("invalid_token", "the access token is invalid, expired or revoked")
    return Authenticated(found[0], principal_for(*found))


def principal_for(grant: Grant, client: Client | None) -> Principal:
    """The principal of an active ``grant`` whose client registration is ``client`` (now)."""
    if client is None or not client.enabled:
        raise Unauthenticated("invalid_token", "the client of this token is disabled")
    try:
        scopes = parse_scopes(grant.scope)
    except InvalidScope as exc:  # cannot happen for tokens we issued, but never trust stored data blindly
        raise Unauthenticated("invalid_token", "the token carries an invalid scope") from exc
    return Principal(
        client_id=grant.client_id,
        scopes=scopes,
        patient=grant.patient,
        fhir_user=grant.fhir_user,
        group_ref=client.group_ref if client.kind == "backend" else None,
        # The registry stores the mark only on backend services; a row written around it (SQL by
        # hand, a restored or foreign database) could put it on an app, and a patient app's
        # ImagingStudy.c would then store for any PatientID: so it is checked here again.
        imaging_source=client.imaging_source and backend_service(client),
    )
