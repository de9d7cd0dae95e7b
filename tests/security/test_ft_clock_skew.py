"""FT-14: clock skew between the EHR, the imaging system and clients (security.md §5).

Nothing runs with a faked clock. The EHR-imaging skew is what the imaging host sees when the
EHR's clock is off by ``d``: the introspection answer's ``exp`` and ``iat`` shifted by ``d`` while
the EHR's ``active`` decision holds (the fault proxy's "skewed" mode rewrites the real answer).
The client-EHR skew is a Backend Services client assertion minted with ``iat``/``exp`` shifted,
sent to the real token endpoint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from tests.gate_stack import GateStack
from tests.imaging.gate.uids import get_instance

from imagebridge.apps.smart_client import discover
from imagebridge.common import jose


@pytest.fixture
def skewed(gate_stack: GateStack) -> Iterator[GateStack]:
    gate_stack.proxy.mode = "skewed"
    yield gate_stack
    gate_stack.proxy.mode = "forward"
    gate_stack.proxy.clock_offset = 0


@pytest.mark.parametrize("offset", [-30, 30])
def test_ft14_thirty_seconds_of_ehr_skew_is_tolerated(skewed: GateStack, offset: int) -> None:
    """A token with 20 s left: an EHR 30 s behind reports its ``exp`` 10 s in our past; one 30 s
    ahead reports ``iat`` 30 s in our future. Both are the EHR's ordinary answer: served."""
    skewed.proxy.clock_offset = offset
    token = skewed.patient_token("alice", lifetime=20)
    response = get_instance(skewed, token)
    assert response.status_code == 200, response.text
    assert b"DICM" in response.content


@pytest.mark.parametrize("offset", [-600, 600])
def test_ft14_ten_minutes_of_ehr_skew_is_refused_with_an_alert(skewed: GateStack, offset: int) -> None:
    skewed.proxy.clock_offset = offset
    log_before = len(skewed.imaging_log())
    token = skewed.patient_token("alice")
    response = get_instance(skewed, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert b"DICM" not in response.content
    claim = "exp" if offset < 0 else "iat"
    alert = skewed.imaging_log()[log_before:]
    assert f"clock skew: the EHR calls a token active but its {claim} is" in alert
    assert token not in alert


def _assertion_token(stack: GateStack, shift: int) -> httpx.Response:
    """A client_credentials request whose assertion was minted on a client clock ``shift`` s off."""
    client = stack.seeded.clients["quality-review"].backend
    with httpx.Client(timeout=30) as http:
        endpoint = str(discover(stack.fhir_base, http)["token_endpoint"])
        now = int(time.time()) + shift
        claims = {
            "iss": client.client_id,
            "sub": client.client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        }
        return http.post(
            endpoint,
            data={
                "grant_type": "client_credentials",
                "scope": "system/ImagingStudy.rs",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": jose.sign(claims, client.private_jwk),
            },
        )


@pytest.mark.parametrize("shift", [-30, 30])
def test_ft14_client_assertion_thirty_seconds_off_is_accepted(gate_stack: GateStack, shift: int) -> None:
    response = _assertion_token(gate_stack, shift)
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    gate_stack.secrets.append(token)
    with httpx.Client(timeout=60) as http:
        search = http.get(f"{gate_stack.dicomweb_base}/studies", headers={"Authorization": f"Bearer {token}"})
    assert search.status_code == 200


@pytest.mark.parametrize("shift", [-600, 600])
def test_ft14_client_assertion_ten_minutes_off_is_refused(gate_stack: GateStack, shift: int) -> None:
    response = _assertion_token(gate_stack, shift)
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"
    assert "access_token" not in response.json()
