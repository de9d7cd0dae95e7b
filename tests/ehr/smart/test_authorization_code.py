"""Authorization code + PKCE against the running EHR: standalone launch, picker, consent, tokens."""

from __future__ import annotations

import time

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet
from tests.ehr.smart.flow import App, UserAgent, exchange, register_public, standalone

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/ImagingStudy.rs"


def test_alice_withholds_imaging_and_gets_patient_context(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(
            ua, app, fhir_base, "alice", "alice-demo-2024", SCOPE, untick=("patient/ImagingStudy.rs",)
        )
    assert done.params["iss"] == fhir_base  # RFC 9207
    response = exchange(origin, app, done.params["code"], done.verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["patient"] == "alice"
    assert "patient/ImagingStudy.rs" not in body["scope"].split()
    assert "patient/Patient.rs" in body["scope"].split()
    assert body["refresh_token"]
    read = httpx.get(
        f"{fhir_base}/Patient/alice", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert read.status_code == 200
    studies = httpx.get(
        f"{fhir_base}/ImagingStudy?patient=alice", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert studies.status_code == 403


def test_id_token_is_rs256_with_published_kid(origin: str, fhir_base: str) -> None:
    """AS-30 (ID token checks): RS256, ``kid`` in the JWKS, ``iss``/``aud``/``exp``/``nonce`` right."""
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(ua, app, fhir_base, "bob", "bob-demo-2024", SCOPE, nonce="n-123")
    body = exchange(origin, app, done.params["code"], done.verifier).json()
    jwks = httpx.get(f"{origin}/.well-known/jwks.json").json()
    token = jwt.decode(body["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"])
    assert token.header["alg"] == "RS256"
    assert token.header["kid"] in {k["kid"] for k in jwks["keys"]}
    claims = token.claims
    assert claims["iss"] == fhir_base
    assert claims["aud"] == app.client_id
    assert claims["nonce"] == "n-123"
    assert claims["iat"] <= time.time() < claims["exp"] <= claims["iat"] + 3600
    assert claims["fhirUser"] == f"{fhir_base}/Patient/bob"
    assert body["patient"] == "bob"


def test_elena_picks_maya_and_only_maya(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(ua, app, fhir_base, "elena", "elena-demo-2024", SCOPE, patient="maya")
    body = exchange(origin, app, done.params["code"], done.verifier).json()
    assert body["patient"] == "maya"
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{fhir_base}/Patient/maya", headers=auth).status_code == 200
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code in (403, 404)


def test_refresh_rotates_and_replay_revokes_the_family(origin: str, fhir_base: str) -> None:
    """AS-18 (wider scope refused, narrower kept) and AS-19 (a replayed refresh token revokes RT2
    and its access tokens: the whole family)."""
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(ua, app, fhir_base, "alice", "alice-demo-2024", SCOPE)
    first = exchange(origin, app, done.params["code"], done.verifier).json()

    def refresh(token: str, **extra: str) -> httpx.Response:
        return httpx.post(
            f"{origin}/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": token, "client_id": app.client_id, **extra},
        )

    wider = refresh(first["refresh_token"], scope=SCOPE + " patient/Observation.rs")
    assert wider.status_code == 400
    assert wider.json()["error"] == "invalid_scope"
    narrow = refresh(first["refresh_token"], scope="patient/Patient.rs offline_access")
    assert narrow.status_code == 200, narrow.text
    second = narrow.json()
    assert second["scope"].split() == ["patient/Patient.rs", "offline_access"]
    assert second["patient"] == "alice"
    replay = refresh(first["refresh_token"])
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    after = refresh(second["refresh_token"])
    assert after.status_code == 400  # the whole family died with the replay
    read = httpx.get(
        f"{fhir_base}/Patient/alice", headers={"Authorization": f"Bearer {second['access_token']}"}
    )
    assert read.status_code == 401


def test_app_for_unknown_redirect_is_not_asked(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    evil = App(app.client_id, "https://evil.example/cb")
    with UserAgent(origin) as ua:
        page = ua.authorize(evil, SCOPE, aud=fhir_base, challenge="x" * 43, response_type="token")
    assert page.status_code == 400
    assert "location" not in page.headers
