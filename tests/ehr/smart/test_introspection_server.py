"""RS-05 … RS-07 (security.md §2) against the running EHR's introspection endpoint."""

from __future__ import annotations

import httpx
from tests.ehr.smart.flow import code_for, exchange, introspect, register_public, signed_in


def test_rs05_caller_must_authenticate(origin: str, introspector: str) -> None:
    assert introspect(origin, "x", None).status_code == 401
    assert introspect(origin, "x", "not-a-token").status_code == 401
    assert (
        httpx.get(
            f"{origin}/auth/introspect", headers={"Authorization": f"Bearer {introspector}"}
        ).status_code
        == 405
    )


def test_rs06_inactive_is_exactly_active_false(origin: str, introspector: str, fhir_base: str) -> None:
    app = register_public(origin)
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        code, verifier = code_for(alice, app, fhir_base, "launch/patient offline_access patient/Patient.rs")
    body = exchange(origin, app, code, verifier).json()
    httpx.post(f"{origin}/auth/revoke", data={"token": body["refresh_token"], "client_id": app.client_id})
    for token in ("garbage", body["access_token"], body["refresh_token"]):
        response = introspect(origin, token, introspector)
        assert response.status_code == 200
        assert response.json() == {"active": False}


def test_rs07_active_patient_token(origin: str, introspector: str, fhir_base: str) -> None:
    app = register_public(origin)
    scope = "launch/patient openid fhirUser patient/Patient.rs patient/ImagingStudy.rs"
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        code, verifier = code_for(alice, app, fhir_base, scope)
    body = exchange(origin, app, code, verifier).json()
    info = introspect(origin, body["access_token"], introspector).json()
    assert info["active"] is True
    assert info["scope"] == body["scope"]
    assert info["client_id"] == app.client_id
    assert info["patient"] == body["patient"] == "alice"
    assert info["fhirUser"] == f"{fhir_base}/Patient/alice"
    assert info["sub"] == "alice"
    assert info["iss"] == fhir_base
    assert isinstance(info["exp"], int)
