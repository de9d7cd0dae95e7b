"""FT-02: the EHR's slowness is bounded per request, not per question (security.md §5).

A backend token's request asks the EHR twice: introspection, then the study query
(``ImagingStudy?identifier=…``). With introspection answering after 2 s of the 3 s
``ehr_timeout`` and the study query hanging, the gate must answer 503 within the timeout + 100 ms
in total — not 2 s + another full timeout.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.gate_stack import EHR_TIMEOUT, GateStack, start_gate_stack
from tests.imaging.gate.fhir_proxy import FhirProxy
from tests.imaging.gate.uids import get_instance

from imagebridge.apps.stack import free_port


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GateStack, FhirProxy]]:
    fhir = FhirProxy(free_port())
    fhir.start()
    try:
        for stack in start_gate_stack(
            tmp_path_factory,
            "decision-budget",
            ehr_port=fhir.ehr_port,
            IMAGEBRIDGE_IMAGING_EHR_FHIR_BASE=fhir.url,
        ):
            yield stack, fhir
    finally:
        fhir.stop()


def test_ft02_slow_introspection_then_slow_study_query_is_one_bound(
    budget_stack: tuple[GateStack, FhirProxy],
) -> None:
    stack, fhir = budget_stack
    token = stack.backend_token()  # decided per study through the EHR's FHIR API
    assert get_instance(stack, token).status_code == 200
    token = stack.backend_token()  # nothing cached about this one
    stack.proxy.mode, stack.proxy.slow_seconds = "slow", EHR_TIMEOUT * 2 / 3
    fhir.search_delay = 30.0
    try:
        response = get_instance(stack, token)
    finally:
        stack.proxy.mode, stack.proxy.slow_seconds, fhir.search_delay = "forward", 30.0, 0.0
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert b"DICM" not in response.content
    elapsed = stack.decision_ms(token)
    assert EHR_TIMEOUT * 1000 <= elapsed <= EHR_TIMEOUT * 1000 + 100
