"""The token endpoint (RFC 6749 §3.2, SMART App Launch 2.2 "Backend Services").

This module handles ``client_credentials`` with ``private_key_jwt`` client authentication
(RFC 7523 §2.2, SMART "client-confidential-asymmetric"): the granted scope is the requested
scope narrowed to what the client was registered for, access tokens live at most 300 s, and no
refresh token is issued.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.smart_scopes import InvalidScope, parse_scopes
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart.client_assertion import InvalidClient, verify_client_assertion
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.smart.oauth_errors import OAuthError, no_store_json

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


async def token_endpoint(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    try:
        form = await read_form(request)
        grant_type = form.get("grant_type", "")
        if grant_type == "client_credentials":
            return no_store_json(await client_credentials(ctx, form))
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    except OAuthError as exc:
        return exc.response()


async def authenticate_client(ctx: EhrContext, form: dict[str, str]) -> Client:
    """RFC 7523 §2.2 client authentication with a signed assertion."""
    if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
        raise OAuthError("invalid_client", f"client_assertion_type must be {JWT_BEARER}", status=401)

    async def resolve(client_id: str) -> Client | None:
        return await ctx.clients.get(client_id)

    try:
        verified = await verify_client_assertion(
            form["client_assertion"],
            form_client_id=form.get("client_id") or None,
            token_endpoint=ctx.token_endpoint,
            resolve_client=resolve,
            fetch_jwks=ctx.jwks.get,
            replay=ctx.replay,
        )
    except InvalidClient as exc:
        raise OAuthError("invalid_client", exc.error_description, status=401) from exc
    client = await ctx.clients.get(verified.client_id)
    if client is None or not client.enabled:
        raise OAuthError("invalid_client", "unknown or disabled client", status=401)
    return client


async def client_credentials(ctx: EhrContext, form: dict[str, str]) -> dict[str, Any]:
    """SMART Backend Services: an access token for ``system/`` scopes within the registration."""
    client = await authenticate_client(ctx, form)
    if client.kind != "backend":
        raise OAuthError("unauthorized_client", "this client may not use client_credentials")
    try:
        requested = parse_scopes(form.get("scope", ""))
        registered = parse_scopes(client.scope)
    except InvalidScope as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    if any(s.level != "system" for s in requested.resource_scopes):
        raise OAuthError("invalid_scope", "Backend Services grants system/ scopes only")
    granted = registered.narrowed_to(requested)
    if not granted.resource_scopes and not granted.others:
        raise OAuthError("invalid_scope", "none of the requested scopes is registered for this client")
    now = time.time()
    lifetime = min(ctx.settings.backend_token_lifetime, 300)
    token = await ctx.grants.issue(
        Grant(client_id=client.client_id, scope=granted.to_string(), issued_at=now, expires_at=now + lifetime)
    )
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": granted.to_string(),
    }
