"""The imaging system as an OAuth 2.0 resource server (security.md §2: RS-01, RS-02, RS-04,
RS-09; ISO-16), against the running pair."""

from __future__ import annotations

import httpx
import pytest
from tests.gate_stack import READ_ACCEPT, GateStack
from tests.imaging.gate.uids import first_instance

from imagebridge.common import jose


def _study_url(stack: GateStack) -> str:
    return f"{stack.dicomweb_base}/studies/{first_instance('ACC-1002').study}"


def _get(url: str, headers: list[tuple[str, str]]) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.get(url, headers=[("Accept", READ_ACCEPT), *headers])


def test_rs01_no_authorization_header_is_401_without_error(gate_stack: GateStack) -> None:
    response = _get(_study_url(gate_stack), [])
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer")],
        [("Authorization", "Basic dXNlcjpwYXNz")],
        [("Authorization", "Bearer a b")],
        [("Authorization", "Bearer forged-token-value")],
        [("Authorization", "Bearer " + "x" * 5000)],
    ],
    ids=["empty", "basic", "two-words", "forged", "oversized"],
)
def test_rs01_malformed_or_unknown_tokens_are_401(
    gate_stack: GateStack, headers: list[tuple[str, str]]
) -> None:
    response = _get(_study_url(gate_stack), headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert b"DICM" not in response.content


def test_rs01_two_authorization_headers_are_401(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    response = _get(_study_url(gate_stack), [("Authorization", f"Bearer {token}")] * 2)
    assert response.status_code == 401


def test_rs02_token_in_query_string_is_401_and_never_logged(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    with httpx.Client(timeout=30) as http:
        response = http.get(_study_url(gate_stack), params={"access_token": token})
        both = http.get(
            _study_url(gate_stack),
            params={"access_token": token},
            headers={"Authorization": f"Bearer {token}", "Accept": READ_ACCEPT},
        )
    assert response.status_code == 401
    assert both.status_code == 401  # a URL carrying a token is refused even with a header
    assert b"DICM" not in both.content
    assert token not in gate_stack.imaging_log()
    assert "access_token=[redacted]" in gate_stack.imaging_log()


def test_rs04_refresh_token_as_bearer_is_401(gate_stack: GateStack) -> None:
    refresh = gate_stack.patient_token("alice", kind="refresh")
    response = _get(_study_url(gate_stack), [("Authorization", f"Bearer {refresh}")])
    assert response.status_code == 401


def test_rs04_client_assertion_as_bearer_is_401(gate_stack: GateStack) -> None:
    client = gate_stack.seeded.clients["quality-review"]
    assert client.private_jwk is not None
    assertion = jose.client_assertion(
        client.client_id, f"{gate_stack.fhir_base}/auth/token", client.private_jwk
    )
    gate_stack.secrets.append(assertion)
    response = _get(_study_url(gate_stack), [("Authorization", f"Bearer {assertion}")])
    assert response.status_code == 401


def test_rs09_token_without_imaging_scope_is_403(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice", scope="launch/patient patient/Observation.rs")
    response = _get(_study_url(gate_stack), [("Authorization", f"Bearer {token}")])
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    "scope", ["launch/patient patient/ImagingStudy.rs", "system/ImagingStudy.rs"], ids=["patient", "backend"]
)
def test_rs09_iso16_read_only_token_cannot_store(gate_stack: GateStack, scope: str) -> None:
    token = (
        gate_stack.backend_token(scope) if scope.startswith("system") else gate_stack.patient_token("alice")
    )
    with httpx.Client(timeout=30) as http:
        response = http.post(
            f"{gate_stack.dicomweb_base}/studies",
            content=b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--\r\n",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
