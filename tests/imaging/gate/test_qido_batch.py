"""QIDO-RS with a backend (system) token asks the EHR about a page of studies at once.

The EHR decides which studies a system token may see; the gate asks it with one
``ImagingStudy?identifier=a,b,c`` search (comma-OR) per batch of undecided candidates
(:meth:`Gate.visible_studies`), never once per study. The calls are counted where they arrive:
the EHR's own access log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.gate_stack import GateStack, start_gate_stack
from tests.imaging.archive.archive_stack import BOUNDARY, STOW_TYPE, instance, part10

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import backend_token

STUDIES = 50
DESCRIPTION = "QIDO BATCH"


@pytest.fixture(scope="module")
def batch_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    """A gate stack with 50 extra one-instance studies of Alice (in the quality-review Group)."""
    for stack in start_gate_stack(tmp_path_factory, "qido-batch"):
        parts = []
        for number in range(STUDIES):
            ds = instance(study=generate_uid(), patient_id=demo_data.ALICE.mrn, number=number)
            ds.StudyDescription = DESCRIPTION
            parts.append(
                f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10(ds) + b"\r\n"
            )
        modality = stack.seeded.clients["modality"]
        with httpx.Client(timeout=120) as http:
            token = backend_token(stack.fhir_base, modality.backend, modality.scope, http)["access_token"]
            stored = http.post(
                f"{stack.dicomweb_base}/studies",
                content=b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE},
            )
        assert stored.status_code == 200, stored.text
        yield stack


def _search(stack: GateStack, token: str) -> list[object]:
    with httpx.Client(timeout=60) as http:
        response = http.get(
            f"{stack.dicomweb_base}/studies",
            params={"StudyDescription": DESCRIPTION, "limit": str(STUDIES)},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        )
    assert response.status_code == 200, response.text
    return list(response.json()) if response.content else []


def _ehr_study_searches(stack: GateStack) -> int:
    """``GET /fhir/ImagingStudy?…`` requests the EHR has logged so far."""
    assert stack.stack.ehr is not None
    return stack.stack.ehr.log().count('"GET /fhir/ImagingStudy?')


def test_a_qido_of_50_studies_asks_the_ehr_once(batch_stack: GateStack) -> None:
    # published in the background: wait until the EHR knows all 50 (with throwaway tokens)
    deadline = time.monotonic() + 120
    while len(_search(batch_stack, batch_stack.backend_token())) < STUDIES:
        assert time.monotonic() < deadline, "the studies were not published"
        time.sleep(0.5)
    token = batch_stack.backend_token()  # a fresh token: nothing about it is cached
    before = _ehr_study_searches(batch_stack)
    assert len(_search(batch_stack, token)) == STUDIES
    asked = _ehr_study_searches(batch_stack) - before
    assert asked == 1, f"{asked} EHR searches for one QIDO-RS page of {STUDIES} studies"
    assert len(_search(batch_stack, token)) == STUDIES  # the decisions are cached within the bound
    assert _ehr_study_searches(batch_stack) - before == 1
