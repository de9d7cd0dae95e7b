"""EHR faults seen by the gate (security.md §5: FT-01, FT-02, FT-03, FT-05) and RS-08.

Introspection runs through the fault proxy of the gate stack (tests/gate_stack.py). Whatever
goes wrong, the imaging system answers 503 + Retry-After or 401, and never a byte of DICOM.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from tests.gate_stack import EHR_TIMEOUT, GateStack
from tests.imaging.gate.fault_proxy import GARBAGE
from tests.imaging.gate.uids import get_instance

from imagebridge.apps.stack import start_service


@pytest.fixture
def proxy_mode(gate_stack: GateStack) -> Iterator[None]:
    """Restore the proxy to plain forwarding after each test."""
    yield
    gate_stack.proxy.mode = "forward"


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert b"DICM" not in response.content


def _assert_within_bound(stack: GateStack, token: str) -> None:
    """FT-01/FT-02: the 503 is decided within the configured EHR timeout + 100 ms, measured by the
    server (a correctness bound of the spec, not a benchmark: the client's clock plays no part)."""
    assert stack.decision_ms(token) <= EHR_TIMEOUT * 1000 + 100


@pytest.mark.usefixtures("proxy_mode")
def test_ft01_introspection_endpoint_down_is_503(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.stop()  # connection refused
    try:
        _assert_unavailable(get_instance(gate_stack, token))
        _assert_within_bound(gate_stack, token)
    finally:
        gate_stack.proxy.start()
    assert get_instance(gate_stack, token).status_code == 200  # recovers on its own


@pytest.mark.usefixtures("proxy_mode")
def test_ft02_slow_introspection_is_503_within_the_bound(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.mode = "slow"  # the proxy would answer after 30 s
    _assert_unavailable(get_instance(gate_stack, token))
    # The gate's deadline applies, not the EHR's pace; and it was the deadline that answered.
    assert gate_stack.decision_ms(token) >= EHR_TIMEOUT * 1000
    _assert_within_bound(gate_stack, token)


@pytest.mark.usefixtures("proxy_mode")
@pytest.mark.parametrize("mode", sorted(GARBAGE))
def test_ft03_garbage_introspection_is_never_permission(gate_stack: GateStack, mode: str) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.mode = mode
    _assert_unavailable(get_instance(gate_stack, token))


@pytest.mark.usefixtures("proxy_mode")
def test_ft03_patient_token_without_patient_is_refused(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.mode = "no_patient"
    response = get_instance(gate_stack, token)
    assert response.status_code == 401
    assert b"DICM" not in response.content


@pytest.mark.usefixtures("proxy_mode")
def test_rs08_active_answer_with_past_exp_is_401(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.mode = "expired"
    response = get_instance(gate_stack, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.usefixtures("proxy_mode")
def test_rs03_token_for_another_resource_server_is_401(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    gate_stack.proxy.mode = "other_audience"
    response = get_instance(gate_stack, token)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_ft03_no_stale_cache_past_the_bound_when_the_ehr_fails(gate_stack: GateStack) -> None:
    """A cached positive answer expires at the window; afterwards an EHR fault means 503."""
    token = gate_stack.patient_token("alice")
    assert get_instance(gate_stack, token).status_code == 200
    gate_stack.proxy.mode = "status_500"
    try:
        time.sleep(2.2)  # past the 2 s revocation window
        _assert_unavailable(get_instance(gate_stack, token))
    finally:
        gate_stack.proxy.mode = "forward"


def test_ft01_ft06_ehr_stopped_then_restarted(gate_stack: GateStack) -> None:
    """The EHR process stopped: 503, never data. Restarted: tokens issued before still work."""
    stack = gate_stack.stack
    assert stack.ehr is not None
    token = gate_stack.patient_token("alice")
    stack.ehr.stop()
    try:
        _assert_unavailable(get_instance(gate_stack, token))
        _assert_within_bound(gate_stack, token)
    finally:
        stack.ehr = start_service("ehr", stack.ehr_env(), stack.ehr.url, stack.ehr.log_path)
    assert get_instance(gate_stack, token).status_code == 200
