"""Dynamic client registration (RFC 7591) for SMART apps: public and confidential-asymmetric.

Redirect URIs (RFC 9700 §2.1, §4.1.3; RFC 8252 §7.3): absolute ``https`` URIs, or ``http`` on a
loopback address for native apps; no fragment, no userinfo, no wildcard; other schemes
(``javascript:``, ``data:``…) are refused. A confidential app gives its keys inline (``jwks``) or
by ``jwks_uri``, which is fetched only through :class:`~.jwks_fetch.JwksFetcher` (SSRF-safe,
bounded in size and time). Dynamic registrations never get ``system/`` scopes, a launch URL or
zero-click launch: those come from an administrator (``imagebridge ehr clients add``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import JSONResponse
from imagebridge.common.smart_scopes import InvalidScope, parse_scopes
from imagebridge.common.tokens import new_secret
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.jwks_fetch import JwksError, key_set_from_jwks
from imagebridge.ehr.smart.oauth_errors import NO_STORE, OAuthError

MAX_BODY = 64 * 1024
#: The most a dynamically registered app may ever be granted.
CEILING = (
    "openid fhirUser profile launch launch/patient offline_access online_access patient/*.cruds user/*.cruds"
)
DEFAULT_SCOPE = "openid fhirUser launch launch/patient offline_access online_access patient/*.rs user/*.rs"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1"})


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
    ctx: EhrContext = request.app.state.ctx
    try:
        metadata = await _read_json(request)
        client, response = await register(ctx, metadata)
    except OAuthError as exc:
        return exc.response()
    await ctx.clients.add(client)
    return JSONResponse(response, status_code=201, headers=NO_STORE)


async def _read_json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise OAuthError("invalid_client_metadata", "the body must be application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise OAuthError("invalid_client_metadata", "registration request too large", status=413)
    try:
        metadata = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OAuthError("invalid_client_metadata", "the body is not JSON") from exc
    if not isinstance(metadata, dict):
        raise OAuthError("invalid_client_metadata", "the body must be a JSON object")
    return metadata


async def register(ctx: EhrContext, metadata: dict[str, Any]) -> tuple[Client, dict[str, Any]]:
    """Validate RFC 7591 §2 metadata; the client to store and the §3.2.1 response."""
    uris = metadata.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a non-empty array")
    redirect_uris = [check_redirect_uri(u) for u in uris]
    method = metadata.get("token_endpoint_auth_method", "none")
    if method not in ("none", "private_key_jwt"):
        raise OAuthError(
            "invalid_client_metadata", "token_endpoint_auth_method must be none or private_key_jwt"
        )
    grant_types = metadata.get("grant_types", ["authorization_code", "refresh_token"])
    if not isinstance(grant_types, list) or not set(grant_types) <= {"authorization_code", "refresh_token"}:
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
    client_id = f"app-{new_secret()[:22]}"
    client = Client(
        client_id=client_id,
        kind="public" if method == "none" else "confidential",
        name=name or client_id,
        scope=scope,
        jwks=jwks,
        jwks_uri=jwks_uri,
        redirect_uris=tuple(redirect_uris),
        launch_url=None,
        group_ref=None,
        zero_click=False,
        enabled=True,
    )
    response: dict[str, Any] = {
        "client_id": client_id,
        "client_name": client.name,
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": method,
        "grant_types": grant_types,
        "response_types": ["code"],
        "scope": scope,
    }
    if jwks is not None:
        response["jwks"] = jwks
    if jwks_uri is not None:
        response["jwks_uri"] = jwks_uri
    return client, response
