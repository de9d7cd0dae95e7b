"""Dynamic client registration (RFC 7591) for SMART apps, public and confidential-asymmetric, and
its management (RFC 7592).

Redirect URIs (RFC 9700 §2.1, §4.1.3; RFC 8252 §7.3): absolute ``https`` URIs, or ``http`` on a
loopback address for native apps; no fragment, no userinfo, no wildcard; other schemes
(``javascript:``, ``data:``…) are refused. A confidential app gives its keys inline (``jwks``) or
by ``jwks_uri``, which is fetched only through :class:`~.jwks_fetch.JwksFetcher` (SSRF-safe,
bounded in size and time). Dynamic registrations never get ``system/`` scopes, a launch URL or
zero-click launch: those come from an administrator (``imagebridge ehr clients add``). Each client
IP address may attempt ``registration_rate_limit`` registrations per window (then 429).

A registration answers with a ``registration_access_token`` and a ``registration_client_uri``
(RFC 7592 §3). With that token the app reads (GET), replaces (PUT, validated exactly like a new
registration: never beyond :data:`CEILING`) or deletes (DELETE: the client is disabled and its
tokens revoked) its registration. The token is stored as a SHA-256 digest, compared in constant
time, and replaced by a new one in every GET and PUT answer (§2.1, §2.2 allow it); a wrong,
foreign or used-up token, or an unknown client, is 401 ``invalid_token`` alike. Clients an
administrator added have no registration access token.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import JSONResponse, bearer_challenge
from imagebridge.common.smart_scopes import InvalidScope, parse_scopes
from imagebridge.common.tokens import digest, new_secret, same
from imagebridge.ehr import audit
from imagebridge.ehr.bearer import Unauthenticated, bearer_token
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart import ratelimit
from imagebridge.ehr.smart.clients import Client, ClientKind
from imagebridge.ehr.smart.forms import read_body
from imagebridge.ehr.smart.jwks_fetch import JwksError, key_set_from_jwks
from imagebridge.ehr.smart.oauth_errors import NO_STORE, OAuthError

#: The most a dynamically registered app may ever be granted.
CEILING = (
    "openid fhirUser profile launch launch/patient offline_access online_access patient/*.cruds user/*.cruds"
)
DEFAULT_SCOPE = "openid fhirUser launch launch/patient offline_access online_access patient/*.rs user/*.rs"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})
GRANT_TYPES = ["authorization_code", "refresh_token"]
#: RFC 7592 §2.2: members of our own answers a client may send back in a PUT; they are ignored.
SERVER_MEMBERS = ("registration_access_token", "registration_client_uri", "client_id_issued_at")
#: Compared against when the client is unknown or has no token, so every refusal costs the same.
_NO_TOKEN = digest(new_secret())


def check_redirect_uri(uri: object) -> str:
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        raise OAuthError("invalid_redirect_uri", "each redirect URI must be a non-empty string")
    if "*" in uri or "#" in uri or any(c.isspace() for c in uri):
        raise OAuthError("invalid_redirect_uri", "redirect URIs may not carry wildcards, fragments or spaces")
    try:
        parts = urlsplit(uri)
        _ = parts.port
    except ValueError as exc:
        raise OAuthError("invalid_redirect_uri", f"not a valid URI: {uri!r}") from exc
    if not parts.hostname or "@" in parts.netloc:
        raise OAuthError("invalid_redirect_uri", "redirect URIs need a host and no user information")
    if parts.scheme == "https":
        return uri
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return uri
    raise OAuthError("invalid_redirect_uri", "redirect URIs must be https, or http on 127.0.0.1 / [::1]")


async def registration_endpoint(request: Request) -> Response:
    """RFC 7591 §3: register a new app."""
    ctx: EhrContext = request.app.state.ctx
    address = request.client.host if request.client else ""
    wait = ctx.registrations.retry_after(address)
    if wait:
        return ratelimit.too_many(wait)
    ctx.registrations.count(address)
    try:
        metadata = await _read_json(request)
        client = await validated_client(ctx, metadata, f"app-{new_secret()[:22]}")
    except OAuthError as exc:
        return exc.response()
    token = new_secret()
    client = replace(client, registration_token=digest(token))
    await ctx.clients.add(client)
    _registered(ctx, request, client.client_id, f"registered with scope {client.scope!r}")
    return JSONResponse(client_information(ctx, client, token), status_code=201, headers=NO_STORE)


async def client_configuration_endpoint(request: Request) -> Response:
    """RFC 7592 §2: read (GET), update (PUT) or delete (DELETE) a registration with its token."""
    ctx: EhrContext = request.app.state.ctx
    try:
        token = bearer_token(request)
    except Unauthenticated as exc:
        return bearer_challenge(exc.error, exc.description)
    if token is None:
        return bearer_challenge(None, "the registration access token is required")
    client = await ctx.clients.get(request.path_params["client_id"])
    stored = client.registration_token if client is not None and client.enabled else None
    if not same(digest(token), stored or _NO_TOKEN) or client is None or stored is None:
        return bearer_challenge("invalid_token", "unknown client or wrong registration access token")
    if request.method == "DELETE":
        if not await ctx.clients.replace_registered(
            replace(client, enabled=False, registration_token=None), stored
        ):
            return bearer_challenge("invalid_token", "the registration access token was just used")
        await ctx.grants.revoke_client(client.client_id)
        _registered(ctx, request, client.client_id, "registration deleted; its tokens revoked")
        return Response(status_code=204, headers=NO_STORE)
    updated = client
    if request.method == "PUT":
        try:
            updated = await _update(ctx, client, await _read_json(request))
        except OAuthError as exc:
            return exc.response()
    new_token = new_secret()
    updated = replace(updated, registration_token=digest(new_token))
    if not await ctx.clients.replace_registered(updated, stored):
        return bearer_challenge("invalid_token", "the registration access token was just used")
    if request.method == "PUT":
        _registered(ctx, request, client.client_id, f"registration updated; scope {updated.scope!r}")
    return JSONResponse(client_information(ctx, updated, new_token), headers=NO_STORE)


def _registered(ctx: EhrContext, request: Request, client_id: str, why: str) -> None:
    audit.authorization_event(ctx, audit.REGISTRATION, request, client_id, why=why)


async def _update(ctx: EhrContext, client: Client, metadata: dict[str, Any]) -> Client:
    """RFC 7592 §2.2: the replacement registration, validated as a new one would be."""
    if metadata.get("client_id") != client.client_id:
        raise OAuthError("invalid_client_metadata", "client_id must be sent and be this client's")
    if "client_secret" in metadata:
        raise OAuthError("invalid_client_metadata", "this server issues no client secrets")
    fields = {k: v for k, v in metadata.items() if k not in SERVER_MEMBERS}
    return await validated_client(ctx, fields, client.client_id)


async def _read_json(request: Request) -> dict[str, Any]:
    body = await read_body(request, "application/json", "invalid_client_metadata")
    try:
        metadata = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OAuthError("invalid_client_metadata", "the body is not JSON") from exc
    if not isinstance(metadata, dict):
        raise OAuthError("invalid_client_metadata", "the body must be a JSON object")
    return metadata


async def validated_client(ctx: EhrContext, metadata: dict[str, Any], client_id: str) -> Client:
    """The client RFC 7591 §2 ``metadata`` describe, checked (§3.2.2 errors); scope within :data:`CEILING`."""
    uris = metadata.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a non-empty array")
    redirect_uris = [check_redirect_uri(u) for u in uris]
    method = metadata.get("token_endpoint_auth_method", "none")
    if method not in ("none", "private_key_jwt"):
        raise OAuthError(
            "invalid_client_metadata", "token_endpoint_auth_method must be none or private_key_jwt"
        )
    grant_types = metadata.get("grant_types", GRANT_TYPES)
    if not isinstance(grant_types, list) or not set(grant_types) <= set(GRANT_TYPES):
        raise OAuthError("invalid_client_metadata", "grant_types: authorization_code and refresh_token only")
    if metadata.get("response_types", ["code"]) != ["code"]:
        raise OAuthError("invalid_client_metadata", "response_types must be ['code']")
    jwks, jwks_uri = metadata.get("jwks"), metadata.get("jwks_uri")
    if method == "private_key_jwt":
        if (jwks is None) == (jwks_uri is None):
            raise OAuthError("invalid_client_metadata", "private_key_jwt needs exactly one of jwks, jwks_uri")
        try:
            if jwks is not None:
                key_set_from_jwks(jwks)
            elif not isinstance(jwks_uri, str):
                raise JwksError("jwks_uri must be a string")
            else:
                await ctx.jwks.get(jwks_uri)
        except JwksError as exc:
            raise OAuthError("invalid_client_metadata", str(exc)) from exc
    elif jwks is not None or jwks_uri is not None:
        raise OAuthError("invalid_client_metadata", "a public client (auth method none) has no keys")
    name = metadata.get("client_name", "")
    if not isinstance(name, str) or len(name) > 200:
        raise OAuthError("invalid_client_metadata", "client_name must be a short string")
    try:
        requested = parse_scopes(str(metadata.get("scope") or DEFAULT_SCOPE))
    except InvalidScope as exc:
        raise OAuthError("invalid_client_metadata", f"scope: {exc}") from exc
    scope = parse_scopes(CEILING).narrowed_to(requested).to_string()
    kind: ClientKind = "public" if method == "none" else "confidential"
    return Client(client_id, kind, name or client_id, scope, jwks, jwks_uri, tuple(redirect_uris))


def client_information(ctx: EhrContext, client: Client, token: str) -> dict[str, Any]:
    """RFC 7591 §3.2.1 / RFC 7592 §3: the registration as stored, with a registration access token."""
    response: dict[str, Any] = {
        "client_id": client.client_id,
        "client_name": client.name,
        "redirect_uris": list(client.redirect_uris),
        "token_endpoint_auth_method": "none" if client.kind == "public" else "private_key_jwt",
        "grant_types": GRANT_TYPES,
        "response_types": ["code"],
        "scope": client.scope,
        "registration_access_token": token,
        "registration_client_uri": f"{ctx.settings.origin}/auth/register/{client.client_id}",
    }
    if client.jwks is not None:
        response["jwks"] = client.jwks
    if client.jwks_uri is not None:
        response["jwks_uri"] = client.jwks_uri
    return response
