"""Adversarial tests AS-01 … AS-20 and AS-30 (security.md §1) against the running EHR process.

The client-assertion attacks AS-21 … AS-29 are tried exhaustively against the verifier in
``test_client_assertion.py`` and, one representative per case, against the server in
``test_backend_attacks.py``.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import update
from tests.conftest import RunningStack
from tests.ehr.smart.flow import (
    App,
    UserAgent,
    code_for,
    csrf_of,
    exchange,
    introspect,
    offered_scopes,
    pkce,
    query_of,
    refresh,
    register,
    register_public,
    signed_in,
)

from imagebridge.common import db
from imagebridge.ehr.tables import auth_codes

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/ImagingStudy.rs"


@pytest.fixture
def app(origin: str) -> App:
    return register_public(origin)


@pytest.fixture(scope="module")
def alice(origin: str) -> Iterator[UserAgent]:
    with signed_in(origin, "alice", "alice-demo-2024") as ua:
        yield ua


def error_redirect(page: httpx.Response, app: App) -> dict[str, str]:
    assert page.status_code == 303, page.text
    location = page.headers["location"]
    assert location.startswith(app.redirect_uri + "?")
    params = query_of(location)
    assert "code" not in params
    return params


def test_as01_no_code_challenge(alice: UserAgent, app: App, fhir_base: str) -> None:
    params = error_redirect(alice.authorize(app, SCOPE, aud=fhir_base, challenge=None), app)
    assert params["error"] == "invalid_request"


def test_as02_plain_pkce_refused(alice: UserAgent, app: App, fhir_base: str) -> None:
    verifier, _ = pkce()
    page = alice.authorize(
        app, SCOPE, aud=fhir_base, challenge=None, code_challenge=verifier[:43], code_challenge_method="plain"
    )
    assert error_redirect(page, app)["error"] == "invalid_request"
    smart = httpx.get(f"{fhir_base}/.well-known/smart-configuration").json()
    assert smart["code_challenge_methods_supported"] == ["S256"]


@pytest.mark.parametrize(
    "verifier",
    [None, "", "random", "challenge", "a" * 42, "a" * 129, "a" * 42 + "!", "a" * 42 + " "],
    ids=["missing", "blank", "random", "equals-challenge", "42", "129", "illegal", "space"],
)
def test_as03_bad_verifier(
    alice: UserAgent, app: App, fhir_base: str, origin: str, verifier: str | None
) -> None:
    verifier_ok, challenge = pkce()
    page = alice.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
    page = alice.consent(page)
    code = query_of(page.headers["location"])["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": app.redirect_uri,
        "client_id": app.client_id,
    }
    if verifier is not None:
        form["code_verifier"] = {"random": pkce()[0], "challenge": challenge}.get(verifier, verifier)
    response = httpx.post(f"{origin}/auth/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "access_token" not in response.json()
    # the code is burnt: even the right verifier no longer works
    assert exchange(origin, app, code, verifier_ok).status_code == 400


def test_as04_confidential_client_needs_pkce_too(alice: UserAgent, origin: str, fhir_base: str) -> None:
    from imagebridge.common import jose

    key = jose.generate_private_jwk("ES384")
    reg = register(
        origin,
        redirect_uris=["https://conf.example/cb"],
        token_endpoint_auth_method="private_key_jwt",
        jwks=jose.public_jwks(key),
    )
    assert reg.status_code == 201, reg.text
    app = App(reg.json()["client_id"], "https://conf.example/cb")
    params = error_redirect(alice.authorize(app, SCOPE, aud=fhir_base, challenge=None), app)
    assert params["error"] == "invalid_request"


def test_as05_code_reuse_revokes_tokens(
    alice: UserAgent, app: App, fhir_base: str, origin: str, ehr: RunningStack, introspector: str
) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    first = exchange(origin, app, code, verifier)
    assert first.status_code == 200
    token = first.json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 200
    second = exchange(origin, app, code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 401
    assert introspect(origin, token, introspector).json() == {"active": False}
    assert httpx.get(f"{ehr.dicomweb_base}/studies", headers=auth).status_code == 401
    assert refresh(origin, app, first.json()["refresh_token"]).status_code == 400


def test_as06_bad_expired_and_unknown_client(
    alice: UserAgent, app: App, fhir_base: str, origin: str, ehr: RunningStack
) -> None:
    verifier, _ = pkce()
    bad = exchange(origin, app, "BAD_CODE", verifier)
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_grant"
    code, verifier = code_for(alice, app, fhir_base, SCOPE)

    async def expire() -> None:
        engine = db.create_engine(ehr.stack.ehr_settings.resolved_database_url)
        async with engine.begin() as conn:
            await conn.execute(
                update(auth_codes).where(auth_codes.c.client_id == app.client_id).values(expires_at=0)
            )
        await engine.dispose()

    asyncio.run(expire())
    old = exchange(origin, app, code, verifier)
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant"
    stranger = exchange(origin, App("no-such-client", app.redirect_uri), "BAD_CODE", verifier)
    assert stranger.status_code == 401
    assert stranger.json()["error"] == "invalid_client"


def test_as07_code_bound_to_client(alice: UserAgent, app: App, fhir_base: str, origin: str) -> None:
    other = register_public(origin, app.redirect_uri)
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    stolen = exchange(origin, other, code, verifier)
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    assert exchange(origin, app, code, verifier).status_code == 200  # the theft did not burn it


@pytest.mark.parametrize("redirect_uri", [None, "https://app.example/other", "https://app.example/cb?x=1"])
def test_as08_redirect_uri_must_match(
    alice: UserAgent, app: App, fhir_base: str, origin: str, redirect_uri: str | None
) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": app.client_id,
        "code_verifier": verifier,
    }
    if redirect_uri:
        form["redirect_uri"] = redirect_uri
    response = httpx.post(f"{origin}/auth/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/cb",
        "https://app.example/cb/../evil",
        "https://app.example/cb.evil.com",
        "https://app.example/cb%2F..%2Fevil",
        "https://app.example@evil.example/cb",
        "https://APP.example/cb",
        "https://app.example/cb?x=1",
        "https://app.example/cb#frag",
        "http://app.example/cb",
        "https://app.example:444/cb",
    ],
)
@pytest.mark.parametrize("bad", [{}, {"scope": "bogus/Thing.zz"}, {"response_type": "token"}])
def test_as09_as10_no_redirect_to_unregistered_uri(
    alice: UserAgent, app: App, fhir_base: str, redirect_uri: str, bad: dict[str, str]
) -> None:
    _, challenge = pkce()
    params = {"scope": SCOPE, **bad}
    page = alice.authorize(
        App(app.client_id, redirect_uri), params.pop("scope"), aud=fhir_base, challenge=challenge, **params
    )
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "evil" not in page.text


@pytest.mark.parametrize(
    "uri",
    [
        "http://app.example/cb",
        "https://*.example/cb",
        "https://app.example/*",
        "javascript:alert(1)",
        "data:text/html,hi",
        "https://app.example/cb#frag",
        "https://user@app.example/cb",
    ],
)
def test_as11_registration_refuses_bad_redirect_uris(origin: str, uri: str) -> None:
    response = register(origin, redirect_uris=[uri])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"


@pytest.mark.parametrize(
    "jwks_uri", ["https://169.254.169.254/jwks.json", "https://10.1.2.3/jwks.json", "http://app.example/jwks"]
)
def test_as11_registration_never_fetches_internal_jwks(origin: str, jwks_uri: str) -> None:
    response = register(
        origin,
        redirect_uris=["https://app.example/cb"],
        token_endpoint_auth_method="private_key_jwt",
        jwks_uri=jwks_uri,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"


def test_as11_loopback_http_redirect_allowed(origin: str) -> None:
    assert register(origin, redirect_uris=["http://127.0.0.1:9999/cb"]).status_code == 201


@pytest.mark.parametrize("aud", ["https://evil.example/fhir", "", "AUD-SUFFIX"])
def test_as12_counterfeit_aud(alice: UserAgent, app: App, fhir_base: str, aud: str) -> None:
    _, challenge = pkce()
    page = alice.authorize(
        app, SCOPE, aud=fhir_base + "x" if aud == "AUD-SUFFIX" else aud, challenge=challenge
    )
    assert error_redirect(page, app)["error"] == "invalid_request"


def test_as12_unknown_resource(alice: UserAgent, app: App, fhir_base: str) -> None:
    _, challenge = pkce()
    page = alice.authorize(
        app, SCOPE, aud=fhir_base, challenge=challenge, resource="https://evil.example/fhir"
    )
    assert error_redirect(page, app)["error"] == "invalid_target"


def test_as13_iss_and_state(alice: UserAgent, app: App, fhir_base: str) -> None:
    _, challenge = pkce()
    state = "s t&a=te/" + secrets.token_hex(4) + "é"
    page = alice.authorize(app, SCOPE, aud=fhir_base, challenge=challenge, state=state)
    page = alice.consent(page)
    params = query_of(page.headers["location"])
    assert params["state"] == state
    assert params["iss"] == fhir_base
    assert httpx.get(f"{fhir_base}/.well-known/smart-configuration").json()["issuer"] == fhir_base


def test_as14_csrf(origin: str, app: App, fhir_base: str) -> None:
    with UserAgent(origin) as ua, UserAgent(origin) as other:
        other_csrf = csrf_of(other.http.get("/ui/login"))
        page = ua.http.get("/ui/login")
        for csrf in ("", other_csrf):
            response = ua.submit(page, {"username": "alice", "password": "alice-demo-2024"}, csrf=csrf)
            assert response.status_code == 403
        _, challenge = pkce()
        page = ua.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
        page = ua.login(page, "alice", "alice-demo-2024")
        assert 'name="decision"' in page.text
        for csrf in ("", other_csrf):
            response = ua.submit(page, {"scope": ["patient/Patient.rs"], "decision": "allow"}, csrf=csrf)
            assert response.status_code == 403
            assert "location" not in response.headers


def test_as15_consent_tampering(alice: UserAgent, app: App, fhir_base: str, origin: str) -> None:
    narrow = register_public(origin, scope="launch/patient patient/Patient.rs")
    _, challenge = pkce()
    page = alice.authorize(narrow, SCOPE, aud=fhir_base, challenge=challenge)
    extra = alice.submit(
        page, {"scope": ["patient/Patient.rs", "patient/ImagingStudy.rs"], "decision": "allow"}
    )
    assert extra.status_code == 403
    page = alice.authorize(narrow, SCOPE, aud=fhir_base, challenge=challenge)
    switched = alice.submit(page, {"scope": ["patient/Patient.rs"], "decision": "allow", "patient": "bob"})
    assert switched.status_code == 403
    with signed_in(origin, "elena", "elena-demo-2024") as elena:
        page = elena.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
        assert "Maya" in page.text
        assert elena.submit(page, {"patient": "alice"}).status_code == 403
    verifier, challenge = pkce()
    page = alice.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
    done = alice.consent(page, [s for s in offered_scopes(page) if s != "offline_access"])
    body = exchange(origin, app, query_of(done.headers["location"])["code"], verifier).json()
    assert "offline_access" not in body["scope"].split()
    assert "refresh_token" not in body  # the user withheld offline_access


def test_as16_headers(origin: str, app: App, fhir_base: str) -> None:
    with UserAgent(origin) as ua:
        verifier, challenge = pkce()
        login = ua.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
        consent = ua.login(login, "alice", "alice-demo-2024")
        for page in (login, consent):
            assert page.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["referrer-policy"] == "no-referrer"
            assert "https://" not in page.text.split("<main>")[0]  # no third-party resources
        done = ua.consent(consent)
        assert done.status_code == 303
        token = exchange(origin, app, query_of(done.headers["location"])["code"], verifier)
        refreshed = refresh(origin, app, token.json()["refresh_token"])
        assert refreshed.status_code == 200
        for response in (token, refreshed):
            assert response.headers["cache-control"] == "no-store"
            assert response.headers["pragma"] == "no-cache"


def test_as17_guessing_is_rejected_and_rate_limited(app: App, origin: str, fhir_base: str) -> None:
    verifier, _ = pkce()
    statuses = []
    with httpx.Client() as http:
        for _ in range(40):
            form = {
                "grant_type": "authorization_code",
                "code": secrets.token_urlsafe(32),
                "redirect_uri": app.redirect_uri,
                "client_id": app.client_id,
                "code_verifier": verifier,
            }
            statuses.append(http.post(f"{origin}/auth/token", data=form).status_code)
        assert set(statuses) <= {400, 429}
        assert statuses[-1] == 429
        rt = http.post(
            f"{origin}/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": secrets.token_urlsafe(32),
                "client_id": "x",
            },
        )
        assert rt.status_code in (400, 401)
        at = http.get(
            f"{fhir_base}/Patient/alice", headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"}
        )
        assert at.status_code == 401


def test_as17_secrets_have_256_bits(alice: UserAgent, app: App, fhir_base: str, origin: str) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    body = exchange(origin, app, code, verifier).json()
    for secret in (code, body["access_token"], body["refresh_token"]):
        assert len(secret) >= 43


def test_as18_refresh_scope_and_client(alice: UserAgent, app: App, fhir_base: str, origin: str) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    body = exchange(origin, app, code, verifier).json()
    other = register_public(origin)
    stolen = refresh(origin, other, body["refresh_token"])
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    wider = refresh(origin, app, body["refresh_token"], scope=SCOPE + " patient/Observation.rs")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"
    same = refresh(origin, app, body["refresh_token"])
    assert same.status_code == 200
    assert set(same.json()["scope"].split()) == set(body["scope"].split())
    narrower = refresh(origin, app, same.json()["refresh_token"], scope="patient/Patient.rs offline_access")
    assert narrower.status_code == 200
    assert set(narrower.json()["scope"].split()) == {"patient/Patient.rs", "offline_access"}


def test_as19_concurrent_refresh_has_one_winner(
    alice: UserAgent, app: App, fhir_base: str, origin: str
) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    rt = exchange(origin, app, code, verifier).json()["refresh_token"]
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: refresh(origin, app, rt), range(10)))
    assert sum(r.status_code == 200 for r in results) <= 1
    assert {r.json()["error"] for r in results if r.status_code != 200} <= {"invalid_grant"}


def test_as20_revocation(alice: UserAgent, app: App, fhir_base: str, origin: str) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    body = exchange(origin, app, code, verifier).json()
    other = register_public(origin)
    refused = httpx.post(
        f"{origin}/auth/revoke", data={"token": body["refresh_token"], "client_id": other.client_id}
    )
    assert refused.status_code == 400
    assert refresh(origin, app, body["refresh_token"]).status_code == 200  # refused means left alone
    unknown = httpx.post(f"{origin}/auth/revoke", data={"token": "nope", "client_id": app.client_id})
    assert unknown.status_code == 200


def test_as20_revoke_refresh_kills_family(
    alice: UserAgent, app: App, fhir_base: str, origin: str, ehr: RunningStack
) -> None:
    code, verifier = code_for(alice, app, fhir_base, SCOPE)
    body = exchange(origin, app, code, verifier).json()
    revoked = httpx.post(
        f"{origin}/auth/revoke",
        data={"token": body["refresh_token"], "token_type_hint": "refresh_token", "client_id": app.client_id},
    )
    assert revoked.status_code == 200
    assert refresh(origin, app, body["refresh_token"]).status_code == 400
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 401
    assert httpx.get(f"{ehr.dicomweb_base}/studies", headers=auth).status_code == 401


def test_as20_connected_apps_page_revokes(app: App, fhir_base: str, origin: str) -> None:
    with signed_in(origin, "bob", "bob-demo-2024") as bob:
        code, verifier = code_for(bob, app, fhir_base, SCOPE)
        body = exchange(origin, app, code, verifier).json()
        page = bob.http.get("/ui/apps")
        assert page.status_code == 200
        assert "Test app" in page.text
        families = re.findall(r'name="family" value="([^"]+)"', page.text)
        for family in families:
            assert (
                bob.http.post("/ui/apps/revoke", data={"csrf": csrf_of(page), "family": family}).status_code
                == 303
            )
        assert refresh(origin, app, body["refresh_token"]).status_code == 400
        auth = {"Authorization": f"Bearer {body['access_token']}"}
        assert httpx.get(f"{fhir_base}/Patient/bob", headers=auth).status_code == 401
        with signed_in(origin, "alice", "alice-demo-2024") as alice:
            apps = alice.http.get("/ui/apps")
            assert (
                alice.http.post(
                    "/ui/apps/revoke", data={"csrf": csrf_of(apps), "family": families[0]}
                ).status_code
                == 403
            )


def test_as17_login_guessing_is_rate_limited(origin: str) -> None:
    with UserAgent(origin) as ua:
        page = ua.http.get("/ui/login")
        statuses = [ua.login(page, "ghost-user", f"guess-{i}").status_code for i in range(12)]
    assert statuses[:10] == [401] * 10
    assert statuses[-1] == 429
