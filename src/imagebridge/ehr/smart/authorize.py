"""The authorization endpoint (RFC 6749 §4.1.1; SMART App Launch 2.2 "Obtain authorization code").

GET and POST (``authorize-post``). Until the client and its ``redirect_uri`` (exact string match,
RFC 9700 §4.1.3) are known good, errors are shown on a page and never redirected (RFC 6749
§4.1.2.1); afterwards they go to the registered redirect URI with ``state`` and ``iss`` (RFC 9207).
PKCE is mandatory with ``S256`` only; ``aud`` must be this FHIR base. A valid request becomes a
pending authorization bound to the browser session, completed by the UI (login, patient picker,
consent) in :mod:`imagebridge.ehr.ui.pages`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from imagebridge.common.smart_scopes import InvalidScope, parse_scopes
from imagebridge.common.tokens import new_secret
from imagebridge.ehr import audit
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart import online
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.codes import CodeStore, LaunchStore
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.oauth_errors import OAuthError
from imagebridge.ehr.smart.users import User
from imagebridge.ehr.tables import auth_requests
from imagebridge.ehr.ui import render
from imagebridge.ehr.ui.sessions import SessionStore, set_cookie

#: RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is 43 characters.
CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
PENDING_LIFETIME = 600


@dataclass(frozen=True)
class Pending:
    """An authorization request the user has not finished answering."""

    id: str
    session: str
    client_id: str
    redirect_uri: str
    state: str | None
    scope: str  # requested ∩ registered: what the consent page offers
    challenge: str
    nonce: str | None
    launched: bool  # EHR launch (the patient came from the launch handle)
    patient: str | None

    def redirect(self, iss: str, **params: str) -> Response:
        return redirect_to(self.redirect_uri, self.state, iss, params)


def redirect_to(uri: str, state: str | None, iss: str, params: dict[str, str]) -> Response:
    """303 to the registered redirect URI with ``params``, ``state`` (verbatim) and ``iss``."""
    query = dict(params)
    if state is not None:
        query["state"] = state
    query["iss"] = iss
    return RedirectResponse(f"{uri}{'&' if '?' in uri else '?'}{urlencode(query)}", status_code=303)


class PendingStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def add(self, pending: Pending) -> None:
        params = {
            "redirect_uri": pending.redirect_uri,
            "state": pending.state,
            "scope": pending.scope,
            "challenge": pending.challenge,
            "nonce": pending.nonce,
            "launched": pending.launched,
        }
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(delete(auth_requests).where(auth_requests.c.expires_at < now))
            await conn.execute(
                insert(auth_requests).values(
                    id=pending.id,
                    session=pending.session,
                    client_id=pending.client_id,
                    params=orjson.dumps(params).decode(),
                    patient=pending.patient,
                    expires_at=now + PENDING_LIFETIME,
                )
            )

    async def get(self, request_id: str, session: str) -> Pending | None:
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(auth_requests).where(
                            auth_requests.c.id == request_id,
                            auth_requests.c.session == session,
                            auth_requests.c.expires_at > time.time(),
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        p = orjson.loads(row["params"])
        return Pending(
            id=row["id"],
            session=row["session"],
            client_id=row["client_id"],
            redirect_uri=p["redirect_uri"],
            state=p["state"],
            scope=p["scope"],
            challenge=p["challenge"],
            nonce=p["nonce"],
            launched=p["launched"],
            patient=row["patient"],
        )

    async def set_patient(self, request_id: str, patient: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(auth_requests).where(auth_requests.c.id == request_id).values(patient=patient)
            )

    async def finish(self, request_id: str) -> bool:
        """Remove the request; False if it was already finished (a double submit)."""
        async with self.engine.begin() as conn:
            gone = await conn.execute(delete(auth_requests).where(auth_requests.c.id == request_id))
        return gone.rowcount == 1


async def _params(request: Request) -> dict[str, str]:
    if request.method == "POST":
        return await read_form(request)
    params: dict[str, str] = {}
    for name, value in parse_qsl(request.url.query, keep_blank_values=True):
        if name in params:
            raise OAuthError("invalid_request", f"parameter {name!r} was sent more than once")
        params[name] = value
    return params


def error_page(message: str, status: int = 400) -> Response:
    return render.page("error.html", {"message": message}, status=status)


async def authorize_endpoint(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    try:
        params = await _params(request)
    except OAuthError as exc:
        return error_page(exc.description)
    client = await ctx.clients.get(params.get("client_id", ""))
    if client is None or not client.enabled or client.kind == "backend":
        return error_page("Unknown application (client_id).")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return error_page("The redirect_uri is not registered for this application.")
    state = params.get("state")
    iss = ctx.settings.fhir_base
    try:
        pending_fields = _validate(ctx, client, params)
    except OAuthError as exc:
        return redirect_to(
            redirect_uri, state, iss, {"error": exc.error, "error_description": exc.description}
        )
    sessions = SessionStore(ctx.engine)
    session = await sessions.current(request)
    cookie = None
    if session is None:
        cookie, session = await sessions.start()
    launch_patient = None
    if params.get("launch"):
        launch_patient = await LaunchStore(ctx.engine).consume(
            params["launch"], session.digest, client.client_id
        )
        if launch_patient is None:
            return redirect_to(
                redirect_uri,
                state,
                iss,
                {"error": "invalid_request", "error_description": "the launch is unknown, used or expired"},
            )
    pending = Pending(
        id=new_secret(),
        session=session.digest,
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        state=state,
        launched=launch_patient is not None,
        patient=launch_patient,
        **pending_fields,
    )
    await PendingStore(ctx.engine).add(pending)
    response = RedirectResponse(f"/ui/authorize/{pending.id}", status_code=303)
    if cookie is not None:
        set_cookie(response, cookie, request, ctx.settings.origin)
    return response


def _validate(ctx: EhrContext, client: Client, params: dict[str, str]) -> dict[str, Any]:
    """Checks whose failures are reported to the (registered) redirect URI."""
    if params.get("response_type") != "code":
        raise OAuthError("unsupported_response_type", "response_type must be 'code'")
    challenge = params.get("code_challenge", "")
    if not challenge:
        raise OAuthError("invalid_request", "code_challenge is required (PKCE)")
    if params.get("code_challenge_method") != "S256":
        raise OAuthError("invalid_request", "code_challenge_method must be S256")
    if not CHALLENGE.match(challenge):
        raise OAuthError("invalid_request", "code_challenge must be 43 base64url characters")
    if params.get("aud", "").rstrip("/") != ctx.settings.fhir_base:
        raise OAuthError("invalid_request", "aud must be this server's FHIR base URL")
    if "resource" in params and params["resource"].rstrip("/") not in ctx.audiences:
        raise OAuthError("invalid_target", "resource is not a server this EHR issues tokens for")  # RFC 8707
    if "launch" in params and not params["launch"]:
        raise OAuthError("invalid_request", "launch is empty")
    try:
        requested = parse_scopes(params.get("scope", ""))
        offered = parse_scopes(client.scope).narrowed_to(requested)
    except InvalidScope as exc:
        raise OAuthError("invalid_scope", str(exc)) from exc
    if any(s.level == "system" for s in requested.resource_scopes):
        raise OAuthError("invalid_scope", "system/ scopes need Backend Services, not a user's authorization")
    if not offered.resource_scopes and not offered.others:
        raise OAuthError("invalid_scope", "none of the requested scopes is registered for this application")
    return {"scope": offered.to_string(), "challenge": challenge, "nonce": params.get("nonce") or None}


def needs_patient(scope: str) -> bool:
    """Whether the grant needs a patient context: ``launch/patient`` or any ``patient/`` scope."""
    scopes = parse_scopes(scope)
    return "launch/patient" in scopes.others or any(s.level == "patient" for s in scopes.resource_scopes)


async def approve(ctx: EhrContext, request: Request, pending: Pending, user: User, scope: str) -> Response:
    """Issue the code for what the user approved and send the browser back to the app (303)."""
    if not await PendingStore(ctx.engine).finish(pending.id):
        return error_page("This authorization was already answered.")
    audit.authorization_event(
        ctx,
        audit.CONSENT_GRANTED,
        request,
        pending.client_id,
        user=user.fhir_user,
        patient=pending.patient if needs_patient(scope) else None,
        why=f"granted: {scope}" + ("" if scope == pending.scope else f" (requested: {pending.scope})"),
    )
    grant = {
        "redirect_uri": pending.redirect_uri,
        "challenge": pending.challenge,
        "scope": scope,
        "patient": pending.patient if needs_patient(scope) else None,
        "fhir_user": user.fhir_user,
        "sub": user.username,
        "nonce": pending.nonce,
        "session": online.bound_session(scope, pending.session),
        "context": {
            "need_patient_banner": pending.launched,
            "smart_style_url": f"{ctx.settings.origin}/ui/smart-style.json",
        },
    }
    code = await CodeStore(ctx.engine).issue(pending.client_id, grant)
    return pending.redirect(ctx.settings.fhir_base, code=code)
