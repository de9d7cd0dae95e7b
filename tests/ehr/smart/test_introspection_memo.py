"""The running EHR remembers introspection answers (ehr/smart/memo.py) and still never gives a stale
one: each test first makes the EHR remember a token and its imaging grant, then changes the
database the way another worker or the admin CLI would (a connection of its own), and introspects
at once. Revocation, a disabled client, a Consent, a new study: seen by the very next answer."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import ehr_cli
from tests.ehr.smart.flow import App, introspect, register_public

from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.smart.grants import Grant, GrantStore
from imagebridge.ehr.smart.introspection import IMAGING_GRANT

SCOPE = "patient/ImagingStudy.rs"


@dataclass
class Patient:
    """A patient of one test with an app's token for them."""

    id: str
    app: App
    token: str


def _run(ehr: RunningStack, change: Any) -> Any:
    """Run ``change(admin)`` on the EHR's database through a connection of the test's own."""

    async def run() -> Any:
        admin = Admin(ehr.stack.ehr_settings)
        try:
            return await change(admin)
        finally:
            await admin.close()

    return asyncio.run(run())


def _study(patient: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"{patient}-s{n}",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{patient_number(patient)}{n}"}],
        "subject": {"reference": f"Patient/{patient}"},
    }


def patient_number(patient: str) -> int:
    return int(patient.rpartition("-")[2], 16)


def uids(ehr: RunningStack, patient: str, *numbers: int) -> list[str]:
    return sorted(_study(patient, n)["identifier"][0]["value"].removeprefix("urn:oid:") for n in numbers)


@pytest.fixture
def patient(ehr: RunningStack, origin: str) -> Patient:
    """A new patient with studies 1 and 2, and a patient-context token of a new app for them."""
    pid = f"memo-{secrets.token_hex(4)}"
    app = register_public(origin)

    async def seed(admin: Admin) -> str:
        await admin.put_resource({"resourceType": "Patient", "id": pid})
        for n in (1, 2):
            await admin.put_resource(_study(pid, n))
        now = time.time()
        return await GrantStore(admin.engine).issue(
            Grant(app.client_id, SCOPE, now + 3600, now, patient=pid, fhir_user=f"Patient/{pid}")
        )

    return Patient(pid, app, _run(ehr, seed))


@pytest.fixture
def caller(ehr: RunningStack) -> Iterator[str]:
    """A fresh introspection token of the imaging system's own backend client."""
    settings = ehr.stack.imaging_settings
    client = BackendClient(settings.client_id, jose.load_or_create_private_jwk(settings.private_key_file))
    with httpx.Client() as http:
        yield str(backend_token(ehr.fhir_base, client, "introspection", http)["access_token"])


def remembered(origin: str, token: str, caller: str) -> dict[str, Any]:
    """Introspect twice (the second answer comes from the worker's memory) and agree."""
    first, second = (introspect(origin, token, caller).json() for _ in range(2))
    assert first == second
    return first


def test_a_revoked_token_is_inactive_at_once(origin: str, caller: str, patient: Patient) -> None:
    assert remembered(origin, patient.token, caller)["active"] is True
    revoked = httpx.post(
        f"{origin}/auth/revoke", data={"token": patient.token, "client_id": patient.app.client_id}
    )
    assert revoked.status_code == 200
    assert introspect(origin, patient.token, caller).json() == {"active": False}


def test_a_token_revoked_by_another_writer_is_inactive_at_once(
    ehr: RunningStack, origin: str, caller: str, patient: Patient
) -> None:
    assert remembered(origin, patient.token, caller)["active"] is True
    _run(ehr, lambda admin: GrantStore(admin.engine).revoke(patient.token))
    assert introspect(origin, patient.token, caller).json() == {"active": False}


def test_a_disabled_client_s_token_is_inactive_at_once(
    ehr: RunningStack, origin: str, caller: str, patient: Patient
) -> None:
    assert remembered(origin, patient.token, caller)["active"] is True
    disabled = ehr_cli(ehr, "clients", "disable", patient.app.client_id)
    assert disabled.returncode == 0, disabled.stderr
    assert introspect(origin, patient.token, caller).json() == {"active": False}


def test_the_caller_s_own_revoked_token_is_refused_at_once(
    ehr: RunningStack, origin: str, caller: str, patient: Patient
) -> None:
    assert remembered(origin, patient.token, caller)["active"] is True
    _run(ehr, lambda admin: GrantStore(admin.engine).revoke(caller))
    refused = introspect(origin, patient.token, caller)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]


def test_a_consent_withholding_a_study_narrows_the_grant_at_once(
    ehr: RunningStack, origin: str, caller: str, patient: Patient
) -> None:
    assert remembered(origin, patient.token, caller)[IMAGING_GRANT]["studies"] == uids(ehr, patient.id, 1, 2)
    consent = {
        "resourceType": "Consent",
        "id": f"{patient.id}-consent",
        "status": "active",
        "patient": {"reference": f"Patient/{patient.id}"},
        "provision": {
            "type": "deny",
            "data": [{"meaning": "instance", "reference": {"reference": f"ImagingStudy/{patient.id}-s2"}}],
        },
    }
    _run(ehr, lambda admin: admin.put_resource(consent))
    assert introspect(origin, patient.token, caller).json()[IMAGING_GRANT]["studies"] == uids(
        ehr, patient.id, 1
    )


def test_a_new_study_joins_the_grant_at_once(
    ehr: RunningStack, origin: str, caller: str, patient: Patient
) -> None:
    assert remembered(origin, patient.token, caller)[IMAGING_GRANT]["studies"] == uids(ehr, patient.id, 1, 2)
    _run(ehr, lambda admin: admin.put_resource(_study(patient.id, 3)))
    assert introspect(origin, patient.token, caller).json()[IMAGING_GRANT]["studies"] == uids(
        ehr, patient.id, 1, 2, 3
    )
