"""The token endpoint (RFC 6749 §3.2, §4.1.3, §6; SMART App Launch 2.2 "Obtain access token",
"Refresh access token" and "Backend Services").

Grants: ``authorization_code`` (PKCE S256 verifier required; public clients identify by
``client_id``, confidential ones authenticate with ``private_key_jwt``), ``refresh_token`` (rotated
on every use; a replayed refresh token revokes its whole family, RFC 9700 §4.14.2; scope may only
narrow) and ``client_credentials`` (Backend Services: scope narrowed to the registration, at most
300 s, no refresh token). Rejected code and refresh-token requests count against the client's
failure budget (:mod:`.ratelimit`); client assertions are not guessable secrets and are not counted.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.smart_scopes import InvalidScope, ScopeSet, parse_scopes
from imagebridge.common.tokens import same, token_id
from imagebridge.ehr import audit
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.dates import now_instant
from imagebridge.ehr.smart import online, ratelimit
from imagebridge.ehr.smart.client_assertion import (
    REPLAYED,
    DeferredUse,
    InvalidClient,
    ReplayStore,
    claimed_issuer,
    verify_client_assertion,
)
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.codes import CodeStore
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.smart.id_token import id_token
from imagebridge.ehr.smart.oauth_errors import OAuthError, no_store_json

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: RFC 7636 §4.1: 43–128 unreserved characters.
VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


async def token_endpoint(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    limit_key: str | None = None  # only grants that present a guessable secret are rate limited
    form: dict[str, str] = {}
    try:
        form = await read_form(request)
        grant_type = form.get("grant_type", "")
        if grant_type in ("authorization_code", "refresh_token"):
            limit_key = form.get("client_id") or "-"
            wait = ratelimit.TOKEN.retry_after(limit_key)
            if wait:
                return ratelimit.too_many(wait)
        if grant_type == "client_credentials":
            return no_store_json(await client_credentials(ctx, form))
        if grant_type == "authorization_code":
            return no_store_json(await authorization_code(ctx, form))
        if grant_type == "refresh_token":
            return no_store_json(await refresh_token(ctx, form))
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
    except OAuthError as exc:
        if limit_key is not None:
            ratelimit.TOKEN.count(limit_key)
        _audit_refusal(ctx, request, form, exc)
        return exc.response()


def _audit_refusal(ctx: EhrContext, request: Request, form: dict[str, str], exc: OAuthError) -> None:
    """security.md AU-02: each refused token request is an AuditEvent (outcome 4, the client it
    claimed to be, unverified); the one that makes 10 within 5 minutes for one claimed client or
    one address also raises a Security Alert."""
    claimed = (form.get("client_id") or claimed_issuer(form.get("client_assertion", "")) or "-")[:200]
    why = f"{exc.error}: {exc.description}"
    audit.authorization_event(ctx, audit.TOKEN_REFUSED, request, claimed, why=why, status=exc.status)
    address = request.client.host if request.client else "-"
    for alarm, key, what in (
        (ratelimit.ALERT_BY_CLIENT, claimed, "this client"),
        (ratelimit.ALERT_BY_ADDRESS, address, "this address"),
    ):
        if alarm.count(key):
            alert = f"{alarm.limit} refused token requests within {alarm.window:.0f} s from {what}"
            audit.authorization_event(
                ctx, audit.SECURITY_ALERT, request, claimed, why=alert, status=exc.status
            )


async def authenticate_client(
    ctx: EhrContext, form: dict[str, str], replay: ReplayStore | None = None
) -> Client:
    """RFC 7523 §2.2 client authentication with a signed assertion (its ``jti`` recorded in ``replay``,
    by default the database's replay store)."""
    if form.get("client_assertion_type") != JWT_BEARER or not form.get("client_assertion"):
        raise OAuthError("invalid_client", f"client_assertion_type must be {JWT_BEARER}", status=401)

    resolved: dict[str, Client] = {}

    async def resolve(client_id: str) -> Client | None:
        generation = await ctx.memo.generation(ctx.engine)  # before the registration is read
        client = await ctx.memo.client(generation, client_id, ctx.clients.get)
        if client is not None:
            resolved[client_id] = client
        return client

    try:
        verified = await verify_client_assertion(
            form["client_assertion"],
            form_client_id=form.get("client_id") or None,
            token_endpoint=ctx.token_endpoint,
            resolve_client=resolve,
            fetch_jwks=ctx.jwks.get,
            replay=replay or ctx.replay,
        )
    except InvalidClient as exc:
        raise OAuthError("invalid_client", exc.error_description, status=401) from exc
    client = resolved.get(verified.client_id)  # the registration the assertion was verified against
    if client is None or not client.enabled:
        raise OAuthError("invalid_client", "unknown or disabled client", status=401)
    return client


async def authenticate_app(ctx: EhrContext, form: dict[str, str]) -> Client:
    """A public app by its ``client_id`` or a confidential one by its assertion (never a backend)."""
    if "client_assertion" in form or "client_assertion_type" in form:
        client = await authenticate_client(ctx, form)
    else:
        found = await ctx.clients.get(form.get("client_id", ""))
        if found is None or not found.enabled:
            raise OAuthError("invalid_client", "unknown or disabled client", status=401)
        if found.kind != "public":
            raise OAuthError("invalid_client", "this client must authenticate (private_key_jwt)", status=401)
        client = found
    if client.kind == "backend":
        raise OAuthError("unauthorized_client", "backend services use client_credentials")
    return client


def pkce_ok(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6 with S256."""
    if not VERIFIER.match(verifier):
        return False
    computed = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
    )
    return same(computed, challenge)


async def authorization_code(ctx: EhrContext, form: dict[str, str]) -> dict[str, Any]:
    client = await authenticate_app(ctx, form)
    redemption = await CodeStore(ctx.engine).redeem(form.get("code", ""), client.client_id)
    if redemption is None:
        raise OAuthError("invalid_grant", "unknown authorization code")
    if redemption.reused:
        await ctx.grants.revoke_family(redemption.family)
        raise OAuthError("invalid_grant", "the authorization code was already used")
    if redemption.expired:
        raise OAuthError("invalid_grant", "the authorization code has expired")
    grant = redemption.grant
    if form.get("redirect_uri") != grant["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    if not pkce_ok(form.get("code_verifier", ""), grant["challenge"]):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    base = Grant(
        client_id=client.client_id,
        scope=grant["scope"],
        issued_at=time.time(),
        expires_at=0,
        patient=grant["patient"],
        fhir_user=grant["fhir_user"],
        sub=grant["sub"],
        family=redemption.family,
        context=grant["context"],
        session=grant.get("session"),
    )
    scopes = grant["scope"].split()
    refresh_expiry = await online.refresh_expiry(ctx, base.scope, base.issued_at, base.session)
    body = await issue_user_tokens(ctx, base, refresh_expiry, audit.TOKEN_ISSUED)
    if "openid" in scopes and ("fhirUser" in scopes or "profile" in scopes):
        body["id_token"] = await id_token(
            ctx, client.client_id, grant["sub"], grant["fhir_user"], grant["nonce"]
        )
    return body


async def issue_user_tokens(
    ctx: EhrContext, base: Grant, refresh_expiry: float | None, event: audit.Kind
) -> dict[str, Any]:
    """An access token (and a rotated refresh token) for ``base``; the SMART token response.
    Audited as ``event`` (security.md AU-08)."""
    lifetime = ctx.settings.access_token_lifetime
    now = time.time()
    access = await ctx.grants.issue(replace(base, kind="access", issued_at=now, expires_at=now + lifetime))
    audit.authorization_event(
        ctx,
        event,
        None,
        base.client_id,
        user=base.fhir_user,
        patient=base.patient,
        why=f"scope: {base.scope}",
        grant_id=token_id(access),
    )
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": base.scope,
    }
    if refresh_expiry is not None:
        body["refresh_token"] = await ctx.grants.issue(
            replace(base, kind="refresh", issued_at=now, expires_at=refresh_expiry)
        )
    if base.patient:
        body["patient"] = base.patient
    body.update(base.context)
    return body


async def refresh_token(ctx: EhrContext, form: dict[str, str]) -> dict[str, Any]:
    client = await authenticate_app(ctx, form)
    secret = form.get("refresh_token", "")
    old = await ctx.grants.lookup(secret, kind="refresh") if secret else None
    if old is None or old.client_id != client.client_id:
        raise OAuthError("invalid_grant", "unknown refresh token")
    if old.revoked and old.family:
        await ctx.grants.revoke_family(old.family)  # RFC 9700 §4.14.2: a replay kills the family
    if not old.active():
        raise OAuthError("invalid_grant", "the refresh token is expired or revoked")
    if not await still_related(ctx, old):
        if old.family:
            await ctx.grants.revoke_family(old.family)
        raise OAuthError("invalid_grant", "the user may no longer act for the patient of this grant")
    deadline = await online.refresh_deadline(ctx, old)
    if deadline is None:
        raise OAuthError("invalid_grant", "online_access ended: the user signed out of the EHR")
    try:
        held = parse_scopes(old.scope)
        wanted = parse_scopes(form["scope"]) if form.get("scope") else held
    except InvalidScope as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    narrowed = held.narrowed_to(wanted)
    if set(narrowed.to_string().split()) != set(wanted.to_string().split()):
        raise OAuthError("invalid_scope", "a refresh may only keep or narrow the granted scope")
    if not await ctx.grants.rotate(secret):
        if old.family:
            await ctx.grants.revoke_family(old.family)
        raise OAuthError("invalid_grant", "the refresh token was already used")
    base = replace(old, scope=narrowed.to_string(), revoked=False)
    return await issue_user_tokens(ctx, base, deadline, audit.TOKEN_REFRESHED)


async def still_related(ctx: EhrContext, grant: Grant) -> bool:
    """Whether the user may still act for the grant's patient (security.md ISO-13: a proxy link that
    ended, e.g. a RelatedPerson past its period, ends the grant at the next refresh)."""
    if grant.patient is None or grant.fhir_user in (None, f"Patient/{grant.patient}"):
        return True
    reach, _ = await ctx.policy.relationships.of_user(str(grant.fhir_user), now_instant())
    return grant.patient in reach


async def client_credentials(ctx: EhrContext, form: dict[str, str]) -> dict[str, Any]:
    """SMART Backend Services: an access token for ``system/`` scopes within the registration.

    The assertion's ``jti`` and the token are committed together, with those of other requests
    arriving meanwhile (:mod:`.group_commit`); a request refused after the signature was verified
    still spends the assertion.
    """
    assertion = DeferredUse()
    client = await authenticate_client(ctx, form, assertion)
    try:
        granted = _backend_scope(client, form)
    except OAuthError:
        await _spend(ctx, assertion)
        raise
    now = time.time()
    lifetime = min(ctx.settings.backend_token_lifetime, 300)
    grant = Grant(
        client_id=client.client_id, scope=granted.to_string(), issued_at=now, expires_at=now + lifetime
    )

    token = await ctx.grants.backend.run((str(assertion.key), assertion.expires_at, grant))
    if token is None:
        raise OAuthError("invalid_client", REPLAYED, status=401)
    audit.authorization_event(
        ctx,
        audit.TOKEN_ISSUED,
        None,
        client.client_id,
        why=f"scope: {granted.to_string()}",
        grant_id=token_id(token),
    )
    return {
        "access_token": token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": granted.to_string(),
    }


def _backend_scope(client: Client, form: dict[str, str]) -> ScopeSet:
    """What a backend ``client`` is granted of the requested ``scope`` (its registration at most)."""
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
    return granted


async def _spend(ctx: EhrContext, assertion: DeferredUse) -> None:
    """Record a verified assertion's ``jti`` on its own (the request failed); a replay is invalid_client."""
    if not await ctx.replay.first_use(str(assertion.key), assertion.expires_at):
        raise OAuthError("invalid_client", REPLAYED, status=401)
