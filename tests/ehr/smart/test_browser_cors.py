"""CORS at the running EHR (ehr/cors.py; SMART App Launch 2.2 CORS considerations, Fetch §3.2,
security.md RS-11): a registered app's origin may call the token and revocation endpoints and the
FHIR API, preflight and actual request; any other origin, however close, gets no grant; the
discovery documents are readable from anywhere; the authorization endpoint, the UI, registration
and introspection do no CORS. A registration added, changed or disabled counts at the next request."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.smart.flow import App, code_for, code_form, register, register_public, signed_in

from imagebridge.ehr.admin import Admin

APP = "https://app.example"
#: Origins that are not APP's: another host, look-alikes, another port or scheme, an opaque origin.
STRANGERS = (
    "https://evil.example",
    "https://app.example.evil.com",
    "https://evil.com.app.example",
    "https://app.example:444",
    "http://app.example",
    "https://APP.example",
    "null",
)
SCOPE = "launch/patient offline_access patient/Patient.rs"


@pytest.fixture(scope="module")
def app(origin: str) -> App:
    return register_public(origin, f"{APP}/cb")


def preflight(url: str, origin: str, method: str, headers: str) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def preflights(base: str, origin: str) -> list[httpx.Response]:
    """What a browser app asks before its token exchange, revocation, FHIR read and update."""
    return [
        preflight(f"{base}/auth/token", origin, "POST", "content-type"),
        preflight(f"{base}/auth/revoke", origin, "POST", "content-type"),
        preflight(f"{base}/fhir/Patient/alice", origin, "GET", "authorization, accept"),
        preflight(f"{base}/fhir/Observation", origin, "POST", "authorization, content-type, accept"),
        preflight(f"{base}/fhir/Patient/alice", origin, "PUT", "Authorization,Content-Type"),
    ]


def granted(response: httpx.Response, origin: str) -> bool:
    """True if ``origin`` may read ``response`` (and it varies by origin, without credentials)."""
    assert "Origin" in response.headers.get("vary", "").split(", "), response.request.url
    assert "access-control-allow-credentials" not in response.headers
    found = response.headers.get("access-control-allow-origin")
    assert found in (None, origin), found
    return found == origin


def test_a_registered_origin_may_preflight_the_token_endpoint_and_the_fhir_api(origin: str, app: App) -> None:
    for answer in preflights(origin, APP):
        assert answer.status_code == 204, (answer.request.url, answer.text)
        assert granted(answer, APP)
        asked = answer.request.headers["access-control-request-headers"].lower().replace(" ", "").split(",")
        assert set(asked) <= {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert answer.request.headers["access-control-request-method"] in answer.headers[
            "access-control-allow-methods"
        ].split(", ")


def test_a_browser_app_exchanges_its_code_reads_and_revokes(origin: str, fhir_base: str, app: App) -> None:
    """The requests of a public client's browser app, each carrying its ``Origin``: all readable."""
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        code, verifier = code_for(alice, app, fhir_base, SCOPE)
    page = {"Origin": APP}
    form = code_form(app, code, verifier)
    token = httpx.post(f"{origin}/auth/token", data=form, headers=page)
    assert token.status_code == 200, token.text
    body = token.json()
    bearer = {**page, "Authorization": f"Bearer {body['access_token']}"}
    read = httpx.get(f"{fhir_base}/Patient/alice", headers=bearer)
    search = httpx.get(f"{fhir_base}/Patient", params={"_id": "alice"}, headers=bearer)
    refused = httpx.get(f"{fhir_base}/Patient/alice", headers=page)  # no token: the 401 is readable
    again = httpx.post(f"{origin}/auth/token", data=form, headers=page)  # a code is used once
    revoked = httpx.post(
        f"{origin}/auth/revoke",
        data={"token": body["refresh_token"], "client_id": app.client_id},
        headers=page,
    )
    assert (read.status_code, search.status_code, refused.status_code) == (200, 200, 401)
    assert (again.status_code, revoked.status_code) == (400, 200)
    for answer in (token, read, search, refused, again, revoked):
        assert granted(answer, APP), answer.request.url
    assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()
    assert read.json()["id"] == "alice"


@pytest.mark.parametrize("stranger", STRANGERS)
def test_no_other_origin_gets_a_grant(origin: str, fhir_base: str, app: App, stranger: str) -> None:
    for answer in preflights(origin, stranger):
        assert answer.status_code == 403, answer.request.url
        assert not granted(answer, stranger)
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        code, verifier = code_for(alice, app, fhir_base, SCOPE)
    form = code_form(app, code, verifier)
    token = httpx.post(f"{origin}/auth/token", data=form, headers={"Origin": stranger})
    assert token.status_code == 200  # answered (an Origin is no credential), but not to that page
    bearer = {"Origin": stranger, "Authorization": f"Bearer {token.json()['access_token']}"}
    read = httpx.get(f"{fhir_base}/Patient/alice", headers=bearer)
    assert read.status_code == 200
    for answer in (token, read):
        assert not granted(answer, stranger)
        assert "access-control-expose-headers" not in answer.headers


@pytest.mark.parametrize(
    "path", ["/fhir/.well-known/smart-configuration", "/fhir/metadata", "/.well-known/jwks.json"]
)
def test_discovery_documents_are_readable_from_any_origin(origin: str, path: str) -> None:
    for page in ("https://evil.example", APP, "null"):
        answer = httpx.get(f"{origin}{path}", headers={"Origin": page})
        ask = preflight(f"{origin}{path}", page, "GET", "authorization, accept")
        assert answer.status_code == 200
        assert ask.status_code == 204
        for response in (answer, ask):
            assert response.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in response.headers
            assert "vary" not in response.headers
    assert httpx.get(f"{origin}{path}").headers["access-control-allow-origin"] == "*"


def test_navigations_and_server_to_server_endpoints_do_no_cors(origin: str, app: App) -> None:
    """Not even a registered origin is granted the authorization endpoint, the UI, registration
    or introspection; their preflights fall through to the routes (405)."""
    page = {"Origin": APP}
    answers = [
        httpx.get(f"{origin}/auth/authorize", params={"client_id": app.client_id}, headers=page),
        httpx.get(f"{origin}/ui/login", headers=page),
        httpx.post(f"{origin}/auth/introspect", data={"token": "x"}, headers=page),
        httpx.post(f"{origin}/auth/register", json={"redirect_uris": [f"{APP}/cb"]}, headers=page),
    ]
    asks = [
        preflight(f"{origin}{path}", APP, "POST", "content-type")
        for path in ("/auth/authorize", "/auth/introspect", "/auth/register", "/ui/login")
    ]
    for answer in (*answers, *asks):
        assert "access-control-allow-origin" not in answer.headers, answer.request.url
    assert {ask.status_code for ask in asks} == {405}


def _grants(origin: str, page: str) -> bool:
    return granted(preflight(f"{origin}/fhir/Patient", page, "GET", "authorization"), page)


def test_registration_changes_count_at_the_next_request(ehr: RunningStack, origin: str) -> None:
    """A dynamic registration is granted at once; an RFC 7592 update moves the grant to the new
    redirect URIs' origins; a disabled client loses it."""
    first, second = (f"https://cors-{secrets.token_hex(4)}.example" for _ in range(2))
    assert not _grants(origin, first)
    response = register(origin, redirect_uris=[f"{first}/cb"], client_name="CORS app")
    assert response.status_code == 201, response.text
    info: dict[str, Any] = response.json()
    assert _grants(origin, first)
    change = {
        k: v for k, v in info.items() if k not in ("registration_access_token", "registration_client_uri")
    }
    change["redirect_uris"] = [f"{second}:8443/cb", "http://[::1]:7001/cb"]
    updated = httpx.put(
        info["registration_client_uri"],
        headers={"Authorization": f"Bearer {info['registration_access_token']}"},
        json=change,
    )
    assert updated.status_code == 200, updated.text
    assert not _grants(origin, first)
    assert not _grants(origin, second)
    assert _grants(origin, f"{second}:8443")
    assert _grants(origin, "http://[::1]:7001")

    async def disable() -> None:
        admin = Admin(ehr.stack.ehr_settings)
        try:
            assert await admin.clients.set_enabled(info["client_id"], False)
        finally:
            await admin.close()

    asyncio.run(disable())
    assert not _grants(origin, f"{second}:8443")
    assert not _grants(origin, "http://[::1]:7001")
