"""AS-21 … AS-30 against the running EHR's token endpoint, one representative attack per case
(the verifier's exhaustive matrix is in test_client_assertion.py)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from tests.conftest import RunningStack
from tests.ehr.smart.flow import code_for, exchange, register_public, signed_in

from imagebridge.common import jose

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def backend(ehr: RunningStack) -> tuple[str, dict[str, Any]]:
    client = ehr.seeded.clients["quality-review"]
    assert client.private_jwk is not None
    return client.client_id, client.private_jwk


def claims(client_id: str, token_url: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def post(origin: str, assertion: str, **form: str) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "scope": "system/ImagingStudy.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        **form,
    }
    return httpx.post(f"{origin}/auth/token", data=data)


def refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()


def test_as21_wrong_grant_type_or_assertion_type(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, key = backend
    assertion = jose.sign(claims(client_id, f"{origin}/auth/token"), key)
    grant = post(origin, assertion, grant_type="password")
    assert grant.status_code == 400
    assert grant.json()["error"] == "unsupported_grant_type"
    refused(
        post(
            origin,
            assertion,
            client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        )
    )


def test_as22_unregistered_key(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, key = backend
    stranger = {**jose.generate_private_jwk("ES384"), "kid": key["kid"]}
    refused(post(origin, jose.sign(claims(client_id, f"{origin}/auth/token"), stranger)))


def test_as23_replayed_jti(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, key = backend
    assertion = jose.sign(claims(client_id, f"{origin}/auth/token"), key)
    assert post(origin, assertion).status_code == 200
    refused(post(origin, assertion))


def test_as23_an_assertion_refused_after_verification_is_spent(
    origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    """The jti is committed with the token; a request refused for its scope still uses it up."""
    client_id, key = backend
    assertion = jose.sign(claims(client_id, f"{origin}/auth/token"), key)
    wrong = post(origin, assertion, scope="patient/ImagingStudy.rs")
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_scope"
    refused(post(origin, assertion))


@pytest.mark.parametrize(
    "changes",
    [{"aud": "https://evil.example/token"}, {"sub": "someone-else"}, {"sub": None}],
    ids=["aud", "iss-ne-sub", "no-sub"],
)
def test_as24_claim_mismatch(
    origin: str, backend: tuple[str, dict[str, Any]], changes: dict[str, Any]
) -> None:
    client_id, key = backend
    refused(post(origin, jose.sign(claims(client_id, f"{origin}/auth/token", **changes), key)))


def test_as24_form_client_id_differs(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, key = backend
    refused(post(origin, jose.sign(claims(client_id, f"{origin}/auth/token"), key), client_id="modality"))


@pytest.mark.parametrize("exp", [-300, None, 600], ids=["past", "missing", "too-far"])
def test_as25_lifetime(origin: str, backend: tuple[str, dict[str, Any]], exp: int | None) -> None:
    client_id, key = backend
    value = None if exp is None else int(time.time()) + exp
    refused(post(origin, jose.sign(claims(client_id, f"{origin}/auth/token", exp=value), key)))


def test_as26_alg_none(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, _ = backend

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(client_id, f'{origin}/auth/token'))}."
    refused(post(origin, token))


@pytest.mark.parametrize("kid", ["../../dev/null", "' OR 1=1--", "unknown"])
def test_as27_kid_injection(origin: str, backend: tuple[str, dict[str, Any]], kid: str) -> None:
    client_id, key = backend
    refused(post(origin, jose.sign(claims(client_id, f"{origin}/auth/token"), {**key, "kid": kid})))


def test_as27_jku_header_ignored(origin: str, backend: tuple[str, dict[str, Any]]) -> None:
    client_id, _ = backend
    attacker = jose.generate_private_jwk("ES384")
    header = {"alg": "ES384", "kid": attacker["kid"], "jku": "https://evil.example/jwks.json"}
    token = jws.serialize_compact(
        header,
        json.dumps(claims(client_id, f"{origin}/auth/token")),
        ECKey.import_key(attacker),
        algorithms=["ES384"],
    )
    refused(post(origin, token))


def test_as28_id_token_is_not_an_assertion(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with signed_in(origin, "bob", "bob-demo-2024") as bob:
        code, verifier = code_for(bob, app, fhir_base, "launch/patient openid fhirUser patient/Patient.rs")
    id_token = exchange(origin, app, code, verifier).json()["id_token"]
    refused(post(origin, id_token, client_id=app.client_id))
    refused(post(origin, id_token))


@pytest.mark.parametrize(("skew", "ok"), [(8, True), (600, False)])
def test_as29_clock_skew(origin: str, backend: tuple[str, dict[str, Any]], skew: int, ok: bool) -> None:
    client_id, key = backend
    now = int(time.time())
    response = post(
        origin, jose.sign(claims(client_id, f"{origin}/auth/token", iat=now + skew, nbf=now + skew), key)
    )
    if ok:
        assert response.status_code == 200, response.text
    else:
        refused(response)


def test_as30_backend_scope_never_exceeds_registration(
    origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, key = backend
    response = post(origin, jose.sign(claims(client_id, f"{origin}/auth/token"), key), scope="system/*.rs")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body["scope"].split()) <= {
        "system/ImagingStudy.rs",
        "system/Patient.rs",
        "system/DiagnosticReport.rs",
    }
    assert body["expires_in"] <= 300
    assert "refresh_token" not in body
