"""Who may store imaging for whom (docs/policy.md "Writing imaging"; security.md ISO-08), as the
EHR's introspection endpoint tells the imaging system: the imaging grant's ``write`` member, and
the per-PatientID answer to ``imaging_write_patient``."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, cohort, issue, put

from imagebridge.apps.demo_data import ALICE, BOB
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.smart.introspection import IMAGING_GRANT, WRITE_PATIENT


def _write(running: RunningStack, token: str, patient_id: str | None = None) -> Any:
    caller = issue(running, add_client(running, "backend", "introspection"), "introspection")
    form = {"token": token, **({WRITE_PATIENT: patient_id} if patient_id is not None else {})}
    with httpx.Client(timeout=30) as http:
        answer = http.post(
            f"{running.stack.ehr_settings.origin}/auth/introspect",
            data=form,
            headers={"Authorization": f"Bearer {caller}"},
        ).json()
    return answer[IMAGING_GRANT].get("write")


def _allowed(running: RunningStack, token: str, patient_id: str) -> bool:
    answer = _write(running, token, patient_id)
    assert (answer["mode"], answer["patient_id"]) == ("ask", patient_id)
    return bool(answer["allowed"])


def test_a_patient_context_writer_gets_its_patients_mrns(sqlite_stack: RunningStack) -> None:
    app = add_client(sqlite_stack, "public", "patient/ImagingStudy.crs")
    alice = issue(
        sqlite_stack,
        app,
        "patient/ImagingStudy.crs",
        patient=ALICE.fhir_id,
        fhir_user=f"Patient/{ALICE.fhir_id}",
    )
    assert _write(sqlite_stack, alice) == {"mode": "mrns", "mrns": [ALICE.mrn]}
    reader = issue(sqlite_stack, app, "patient/ImagingStudy.rs", patient=ALICE.fhir_id)
    assert _write(sqlite_stack, reader) is None  # no write scope, no write member
    no_context = issue(sqlite_stack, app, "patient/ImagingStudy.c")
    assert _write(sqlite_stack, no_context) == {"mode": "mrns", "mrns": []}  # never everyone


def test_backend_and_user_writers_are_asked_per_patient(sqlite_stack: RunningStack) -> None:
    group = f"writes-{uuid.uuid4().hex[:8]}"
    put(sqlite_stack, cohort(group, ALICE.fhir_id))
    scope = "system/ImagingStudy.c"
    backend = issue(sqlite_stack, add_client(sqlite_stack, "backend", scope, f"Group/{group}"), scope)
    assert _write(sqlite_stack, backend) == {"mode": "ask"}
    assert _allowed(sqlite_stack, backend, ALICE.mrn)
    assert not _allowed(sqlite_stack, backend, BOB.mrn)
    assert not _allowed(sqlite_stack, backend, "MRN-NOBODY")
    no_group = issue(sqlite_stack, add_client(sqlite_stack, "backend", scope), scope)
    assert not _allowed(sqlite_stack, no_group, ALICE.mrn)
    # a clinician: the read rules (Dr. Chen's hospital manages Alice and Bob); no separate write rule
    app = add_client(sqlite_stack, "public", "user/ImagingStudy.crs")
    chen = issue(sqlite_stack, app, "user/ImagingStudy.crs", fhir_user="Practitioner/dr-chen")
    assert _allowed(sqlite_stack, chen, BOB.mrn)
    assert not _allowed(sqlite_stack, chen, "MRN-NOBODY")
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    put(sqlite_stack, {"resourceType": "Practitioner", "id": stranger})
    nobody = issue(sqlite_stack, app, "user/ImagingStudy.crs", fhir_user=f"Practitioner/{stranger}")
    assert not _allowed(sqlite_stack, nobody, ALICE.mrn)


def test_an_imaging_source_writes_for_any_patient(sqlite_stack: RunningStack) -> None:
    client_id = f"source-{uuid.uuid4().hex[:8]}"
    scope = "system/ImagingStudy.c"

    async def register() -> None:
        admin = Admin(sqlite_stack.stack.ehr_settings)
        try:
            jwks = jose.public_jwks(jose.generate_private_jwk())
            await admin.add_client(client_id, "backend", scope=scope, jwks=jwks, imaging_source=True)
        finally:
            await admin.close()

    asyncio.run(register())
    assert _write(sqlite_stack, issue(sqlite_stack, client_id, scope)) == {"mode": "any"}
