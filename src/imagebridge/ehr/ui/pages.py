"""The EHR's own web UI: sign-in, patient picker, consent, clinician chart with app launcher and
the patient's "connected apps" page (SMART App Launch 2.2 "EHR Launch" and "Standalone Launch").

Every form carries the session's CSRF token (RFC 6749 §10.12); a missing or foreign token is 403.
Every page carries the anti-framing and no-referrer headers of :mod:`.render`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from imagebridge.common.responses import JSONResponse
from imagebridge.ehr import audit
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart import ratelimit
from imagebridge.ehr.smart.authorize import Pending, PendingStore, approve, error_page, needs_patient
from imagebridge.ehr.smart.codes import LaunchStore
from imagebridge.ehr.smart.users import User, UserStore, display_name, patients_for
from imagebridge.ehr.ui import render
from imagebridge.ehr.ui.scope_words import describe
from imagebridge.ehr.ui.sessions import COOKIE, Session, SessionStore, set_cookie

#: SMART App Launch 2.2 ``smart_style_url``: styling hints for embedded apps.
STYLE = {
    "color_background": "#f7f9fb",
    "color_error": "#a40000",
    "color_highlight": "#2f6db5",
    "color_modal_backdrop": "",
    "color_success": "#2e7d32",
    "color_text": "#1d2733",
    "dim_border_radius": "4px",
    "dim_font_size": "14px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, sans-serif",
    "font_family_heading": "system-ui, sans-serif",
}


class Forbidden(Exception):
    """A form that failed its CSRF check or was tampered with (the message, if any, is shown)."""


PageHandler = Callable[[Request, EhrContext, Session, User], Awaitable[Response]]
FormHandler = Callable[[Request, EhrContext, Session, User, FormData], Awaitable[Response]]


def _ctx(request: Request) -> EhrContext:
    ctx: EhrContext = request.app.state.ctx
    return ctx


def _forbidden(message: str = "This form has expired or was not sent by this page.") -> Response:
    return error_page(message, status=403)


async def _signed_in(request: Request) -> tuple[Session, User] | None:
    ctx = _ctx(request)
    session = await SessionStore(ctx.engine).current(request)
    if session is None or session.username is None:
        return None
    user = await UserStore(ctx.engine).get(session.username)
    return None if user is None or not user.enabled else (session, user)


async def _checked_form(request: Request, session: Session | None) -> FormData:
    form = await request.form()
    token = form.get("csrf")
    if session is None or not session.csrf_ok(token if isinstance(token, str) else None):
        raise Forbidden
    return form


def _to_login(request: Request) -> Response:
    return render.secure(
        RedirectResponse(f"/ui/login?{urlencode({'next': request.url.path})}", status_code=303)
    )


def page(handler: PageHandler) -> Callable[[Request], Awaitable[Response]]:
    """A page for a signed-in user; anyone else is sent to the login page first."""

    async def endpoint(request: Request) -> Response:
        found = await _signed_in(request)
        if found is None:
            return _to_login(request)
        return await handler(request, _ctx(request), *found)

    return endpoint


def form(handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
    """A form post of a signed-in user with the session's CSRF token; otherwise 403."""

    async def endpoint(request: Request) -> Response:
        try:
            found = await _signed_in(request)
            if found is None:
                raise Forbidden
            session, user = found
            return await handler(request, _ctx(request), session, user, await _checked_form(request, session))
        except Forbidden as exc:
            return _forbidden(*exc.args)

    return endpoint


async def login_page(request: Request) -> Response:
    sessions = SessionStore(_ctx(request).engine)
    session = await sessions.current(request)
    cookie = None
    if session is None:
        cookie, session = await sessions.start()
    next_url = request.query_params.get("next", "/ui/")
    response = render.page("login.html", {"csrf": session.csrf, "next": _safe_next(next_url), "user": None})
    if cookie:
        set_cookie(response, cookie, request, _ctx(request).settings.origin)
    return response


def _safe_next(url: str) -> str:
    """Only local UI paths: never an open redirect."""
    return url if url.startswith("/ui/") and "//" not in url and "\\" not in url else "/ui/"


async def login_submit(request: Request) -> Response:
    ctx = _ctx(request)
    sessions = SessionStore(ctx.engine)
    session = await sessions.current(request)
    try:
        fields = await _checked_form(request, session)
    except Forbidden:
        return _forbidden()
    assert session is not None
    username = str(fields.get("username", ""))[:100]
    next_url = _safe_next(str(fields.get("next", "/ui/")))
    wait = ratelimit.LOGIN.retry_after(username)
    if wait:
        response = render.page(
            "login.html",
            {
                "csrf": session.csrf,
                "next": next_url,
                "error": "Too many attempts; try again later.",
                "user": None,
            },
            status=429,
        )
        response.headers["Retry-After"] = str(wait)
        return response
    user = await UserStore(ctx.engine).verify(username, str(fields.get("password", "")))
    if user is None:
        ratelimit.LOGIN.count(username)
        return render.page(
            "login.html",
            {"csrf": session.csrf, "next": next_url, "error": "Wrong username or password.", "user": None},
            status=401,
        )
    cookie, _ = await sessions.sign_in(session, user.username)
    response = render.secure(RedirectResponse(next_url, status_code=303))
    set_cookie(response, cookie, request, _ctx(request).settings.origin)
    return response


@form
async def logout(
    request: Request, ctx: EhrContext, session: Session, user: User, fields: FormData
) -> Response:
    """Sign out: the session ends, and with it the user's online_access grants (:mod:`..smart.online`)."""
    await SessionStore(ctx.engine).end(session)
    response = render.secure(RedirectResponse("/ui/login", status_code=303))
    response.delete_cookie(COOKIE, path="/")
    return response


@page
async def home(request: Request, ctx: EhrContext, session: Session, user: User) -> Response:
    target = "/ui/patients" if user.is_clinician else "/ui/apps"
    return render.secure(RedirectResponse(target, status_code=303))


@page
async def authorization(request: Request, ctx: EhrContext, session: Session, user: User) -> Response:
    """The next step of a pending authorization: sign-in, patient picker, consent or the code."""
    pending = await PendingStore(ctx.engine).get(request.path_params["rid"], session.digest)
    client = None if pending is None else await ctx.clients.get(pending.client_id)
    if pending is None or client is None:
        return error_page("This authorization request is unknown or has expired.")
    if pending.patient is None and needs_patient(pending.scope):
        candidates = await patients_for(ctx.store, user)
        if not candidates:
            return pending.redirect(ctx.settings.fhir_base, error="access_denied")
        if len(candidates) > 1 or not user.fhir_user.startswith("Patient/"):  # a proxy always chooses
            return render.page(
                "picker.html",
                {
                    "csrf": session.csrf,
                    "request_id": pending.id,
                    "patients": candidates,
                    "app": client.name,
                    "user": user,
                },
            )
        await PendingStore(ctx.engine).set_patient(pending.id, candidates[0][0])
        pending = await PendingStore(ctx.engine).get(pending.id, session.digest)
        assert pending is not None
    if pending.launched and client.zero_click:
        return render.secure(await approve(ctx, request, pending, user, pending.scope))
    patient = await ctx.store.read("Patient", pending.patient) if pending.patient else None
    return render.page(
        "consent.html",
        {
            "csrf": session.csrf,
            "request_id": pending.id,
            "app": client.name,
            "patient_name": display_name(patient) if patient else None,
            "scopes": [(s, describe(s)) for s in pending.scope.split()],
            "user": user,
        },
    )


async def _pending(ctx: EhrContext, request: Request, session: Session) -> Pending:
    pending = await PendingStore(ctx.engine).get(request.path_params["rid"], session.digest)
    if pending is None:
        raise Forbidden("This authorization request is unknown or has expired.")
    return pending


@form
async def pick_patient(
    request: Request, ctx: EhrContext, session: Session, user: User, fields: FormData
) -> Response:
    pending = await _pending(ctx, request, session)
    choice = str(fields.get("patient", ""))
    if pending.patient is not None or choice not in {pid for pid, _ in await patients_for(ctx.store, user)}:
        raise Forbidden("You may not act for that patient.")
    await PendingStore(ctx.engine).set_patient(pending.id, choice)
    return render.secure(RedirectResponse(f"/ui/authorize/{pending.id}", status_code=303))


@form
async def consent(
    request: Request, ctx: EhrContext, session: Session, user: User, fields: FormData
) -> Response:
    pending = await _pending(ctx, request, session)
    offered = pending.scope.split()
    chosen = [str(s) for s in fields.getlist("scope")] if fields.get("decision") == "allow" else []
    if not set(chosen) <= set(offered) or "patient" in fields:
        raise Forbidden("The form asked for more than this application requested.")
    if not chosen:
        if await PendingStore(ctx.engine).finish(pending.id):
            audit.authorization_event(
                ctx,
                audit.CONSENT_DENIED,
                request,
                pending.client_id,
                user=user.fhir_user,
                patient=pending.patient,
                why=f"denied: {pending.scope}",
            )
        return render.secure(pending.redirect(ctx.settings.fhir_base, error="access_denied"))
    if needs_patient(" ".join(chosen)) and pending.patient is None:
        raise Forbidden("No patient was chosen.")
    return render.secure(
        await approve(ctx, request, pending, user, " ".join(s for s in offered if s in chosen))
    )


@page
async def patient_list(request: Request, ctx: EhrContext, session: Session, user: User) -> Response:
    if not user.is_clinician:
        return _forbidden("Only clinicians can open charts.")
    return render.page("patients.html", {"patients": await patients_for(ctx.store, user), "user": user})


@page
async def chart(request: Request, ctx: EhrContext, session: Session, user: User) -> Response:
    patient_id = request.path_params["pid"]
    patient = await ctx.store.read("Patient", patient_id) if user.is_clinician else None
    if patient is None:
        return error_page("No such chart.", status=404)
    apps = [c for c in await ctx.clients.all() if c.enabled and c.launch_url and c.kind != "backend"]
    return render.page(
        "chart.html",
        {
            "csrf": session.csrf,
            "patient_id": patient_id,
            "patient_name": display_name(patient),
            "apps": apps,
            "user": user,
        },
    )


@form
async def launch(
    request: Request, ctx: EhrContext, session: Session, user: User, fields: FormData
) -> Response:
    """EHR launch: send the app to its launch URL with ``iss`` and a fresh single-use ``launch``."""
    patient_id = request.path_params["pid"]
    client = await ctx.clients.get(str(fields.get("client_id", "")))
    if (
        not user.is_clinician
        or client is None
        or not client.enabled
        or not client.launch_url
        or await ctx.store.read("Patient", patient_id) is None
    ):
        raise Forbidden("This app cannot be launched for this chart.")
    handle = await LaunchStore(ctx.engine).issue(session.digest, client.client_id, patient_id)
    sep = "&" if "?" in client.launch_url else "?"
    target = f"{client.launch_url}{sep}{urlencode({'iss': ctx.settings.fhir_base, 'launch': handle})}"
    return render.secure(RedirectResponse(target, status_code=303))


@page
async def connected_apps(request: Request, ctx: EhrContext, session: Session, user: User) -> Response:
    grants = []
    for family, client_id, scope in await ctx.grants.families_of(user.username):
        client = await ctx.clients.get(client_id)
        grants.append({"family": family, "client": client.name if client else client_id, "scope": scope})
    return render.page("apps.html", {"csrf": session.csrf, "grants": grants, "user": user})


@form
async def revoke_app(
    request: Request, ctx: EhrContext, session: Session, user: User, fields: FormData
) -> Response:
    family = str(fields.get("family", ""))
    if family not in {f for f, _, _ in await ctx.grants.families_of(user.username)}:
        raise Forbidden("That grant is not yours.")
    await ctx.grants.revoke_family(family)
    return render.secure(RedirectResponse("/ui/apps", status_code=303))


async def smart_style(_: Request) -> Response:
    """The SMART style (``smart_style_url``), which any origin may read (ehr/cors.py)."""
    return JSONResponse(STYLE, headers={"Cache-Control": "max-age=3600"})


routes = [
    Route("/ui/", home),
    Route("/ui/login", login_page, methods=["GET"]),
    Route("/ui/login", login_submit, methods=["POST"]),
    Route("/ui/logout", logout, methods=["POST"]),
    Route("/ui/authorize/{rid}", authorization, methods=["GET"]),
    Route("/ui/authorize/{rid}/patient", pick_patient, methods=["POST"]),
    Route("/ui/authorize/{rid}/consent", consent, methods=["POST"]),
    Route("/ui/patients", patient_list),
    Route("/ui/chart/{pid}", chart, methods=["GET"]),
    Route("/ui/chart/{pid}/launch", launch, methods=["POST"]),
    Route("/ui/apps", connected_apps, methods=["GET"]),
    Route("/ui/apps/revoke", revoke_app, methods=["POST"]),
    Route("/ui/smart-style.json", smart_style),
]
