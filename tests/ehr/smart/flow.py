"""Driving the EHR's authorization UI as a browser would, with httpx: forms, cookies, CSRF tokens."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx

from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.admin import Admin

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


@dataclass(frozen=True)
class App:
    client_id: str
    redirect_uri: str


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def register(origin: str, **metadata: Any) -> httpx.Response:
    return httpx.post(f"{origin}/auth/register", json=metadata)


def register_public(
    origin: str, redirect_uri: str = "https://app.example/cb", scope: str | None = None
) -> App:
    body: dict[str, Any] = {"redirect_uris": [redirect_uri], "client_name": "Test app"}
    if scope:
        body["scope"] = scope
    response = register(origin, **body)
    assert response.status_code == 201, response.text
    return App(response.json()["client_id"], redirect_uri)


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


class UserAgent:
    """One browser: a cookie jar, following redirects within the EHR and stopping at the app."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.http = httpx.Client(base_url=origin, follow_redirects=False, timeout=30)

    def __enter__(self) -> UserAgent:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def follow(self, response: httpx.Response) -> httpx.Response:
        while response.status_code in (302, 303) and response.headers["location"].startswith(
            ("/", self.origin)
        ):
            response = self.http.get(response.headers["location"].removeprefix(self.origin))
        return response

    def authorize(
        self, app: App, scope: str, *, aud: str, challenge: str | None, **extra: str
    ) -> httpx.Response:
        params = {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": app.redirect_uri,
            "scope": scope,
            "state": "st-" + secrets.token_hex(4),
            "aud": aud,
            **({"code_challenge": challenge, "code_challenge_method": "S256"} if challenge else {}),
            **extra,
        }
        return self.follow(self.http.get(f"/auth/authorize?{urlencode(params)}"))

    def submit(self, page: httpx.Response, fields: dict[str, Any], csrf: str | None = None) -> httpx.Response:
        action = FORM_ACTION.search(page.text)
        assert action, page.text
        data = {"csrf": csrf if csrf is not None else csrf_of(page), **fields}
        return self.follow(self.http.post(action.group(1), data=data))

    def login(self, page: httpx.Response, username: str, password: str) -> httpx.Response:
        next_url = re.search(r'name="next" value="([^"]*)"', page.text)
        return self.submit(
            page,
            {"username": username, "password": password, "next": next_url.group(1) if next_url else "/ui/"},
        )

    def consent(self, page: httpx.Response, scopes: list[str] | None = None) -> httpx.Response:
        offered = re.findall(r'name="scope" value="([^"]+)"', page.text)
        return self.submit(page, {"scope": offered if scopes is None else scopes, "decision": "allow"})


def offered_scopes(page: httpx.Response) -> list[str]:
    return re.findall(r'name="scope" value="([^"]+)"', page.text)


def code_form(app: App, code: str, verifier: str, **extra: str) -> dict[str, str]:
    """The token request of the authorization code grant with PKCE (RFC 6749 §4.1.3, RFC 7636)."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
        "code_verifier": verifier,
        **extra,
    }


def exchange(origin: str, app: App, code: str, verifier: str, **extra: str) -> httpx.Response:
    return httpx.post(f"{origin}/auth/token", data=code_form(app, code, verifier, **extra))


def introspect(origin: str, token: str, caller: str | None, method: str = "POST") -> httpx.Response:
    """RFC 7662 introspection of ``token``, authenticated with the bearer token ``caller``."""
    headers = {"Authorization": f"Bearer {caller}"} if caller else {}
    return httpx.request(method, f"{origin}/auth/introspect", data={"token": token}, headers=headers)


def refresh(origin: str, app: App, token: str, **extra: str) -> httpx.Response:
    return httpx.post(
        f"{origin}/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": token, "client_id": app.client_id, **extra},
    )


@dataclass(frozen=True)
class Authorized:
    """What the app's redirect URI received, and the PKCE verifier the app kept."""

    params: dict[str, str]
    verifier: str
    state: str


def standalone(
    ua: UserAgent,
    app: App,
    fhir_base: str,
    username: str,
    password: str,
    scope: str,
    *,
    untick: tuple[str, ...] = (),
    patient: str | None = None,
    **extra: str,
) -> Authorized:
    """Sign in, pick a patient if asked, consent (minus ``untick``); the callback's query."""
    verifier, challenge = pkce()
    page = ua.authorize(app, scope, aud=fhir_base, challenge=challenge, **extra)
    if "/ui/login" in str(page.url):
        page = ua.login(page, username, password)
    if 'name="patient"' in page.text:
        assert patient is not None, "the patient picker appeared"
        page = ua.submit(page, {"patient": patient})
    if 'name="decision"' in page.text:
        page = ua.consent(page, [s for s in offered_scopes(page) if s not in untick])
    assert page.status_code == 303, page.text
    location = page.headers["location"]
    assert location.startswith(app.redirect_uri + "?"), location
    params = query_of(location)
    return Authorized(params, verifier, params.get("state", ""))


def code_for(ua: UserAgent, app: App, fhir_base: str, scope: str, **extra: str) -> tuple[str, str]:
    """(code, verifier) from an already signed-in user agent that consents to everything."""
    verifier, challenge = pkce()
    page = ua.authorize(app, scope, aud=fhir_base, challenge=challenge, **extra)
    if 'name="decision"' in page.text:
        page = ua.consent(page)
    assert page.status_code == 303, page.text
    return query_of(page.headers["location"])["code"], verifier


def sign_out(ua: UserAgent) -> None:
    """Press "Sign out" in the EHR's UI."""
    page = ua.http.get("/ui/apps")
    assert ua.http.post("/ui/logout", data={"csrf": csrf_of(page)}).status_code == 303


def signed_in(origin: str, username: str, password: str) -> UserAgent:
    ua = UserAgent(origin)
    page = ua.http.get("/ui/login")
    done = ua.login(page, username, password)
    assert done.status_code == 200, done.text
    return ua


def add_launchable(settings: EhrSettings, scope: str, base: str, *, zero_click: bool) -> App:
    """An administrator registers an EHR-launchable app at ``base``: ``/launch`` and ``/cb``."""
    client_id = f"launch-{secrets.token_hex(4)}"

    async def add() -> None:
        admin = Admin(settings)
        try:
            await admin.add_client(
                client_id,
                "public",
                scope=scope,
                name=f"Viewer {client_id}",
                redirect_uris=[f"{base}/cb"],
                launch_url=f"{base}/launch",
                zero_click=zero_click,
            )
        finally:
            await admin.close()

    with ThreadPoolExecutor(1) as pool:  # callers may own an event loop (Playwright's sync API)
        pool.submit(asyncio.run, add()).result()
    return App(client_id, f"{base}/cb")
