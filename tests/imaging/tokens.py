"""Access tokens for DICOMweb tests: backend tokens through the EHR's token endpoint, and
patient-context tokens issued in the EHR's grant store (as its authorization-code flow would)."""

from __future__ import annotations

import asyncio
import time

import httpx
from tests.conftest import RunningStack

from imagebridge.apps.smart_client import backend_token
from imagebridge.common import db
from imagebridge.ehr.smart.grants import Grant, GrantStore


def quality_review_token(running: RunningStack, scope: str = "system/ImagingStudy.rs") -> str:
    """The backend client pre-authorized for the quality-review Group (Alice only)."""
    client = running.seeded.clients["quality-review"]
    with httpx.Client(timeout=30) as http:
        return str(backend_token(running.fhir_base, client.backend, scope, http)["access_token"])


def modality_token(running: RunningStack) -> str:
    client = running.seeded.clients["modality"]
    with httpx.Client(timeout=30) as http:
        return str(backend_token(running.fhir_base, client.backend, client.scope, http)["access_token"])


def patient_token(
    running: RunningStack,
    patient: str,
    fhir_user: str,
    scope: str = "launch/patient patient/ImagingStudy.rs",
    client_id: str = "demo-app",
) -> str:
    """A patient-context access token, as the EHR issues after a standalone launch."""

    async def issue() -> str:
        engine = db.create_engine(running.stack.ehr_settings.resolved_database_url, pool_size=1)
        try:
            now = time.time()
            grant = Grant(
                client_id=client_id,
                scope=scope,
                expires_at=now + 300,
                issued_at=now,
                patient=patient,
                fhir_user=fhir_user,
            )
            return await GrantStore(engine).issue(grant)
        finally:
            await engine.dispose()

    return asyncio.run(issue())


def maya_proxy_token(running: RunningStack) -> str:
    """Elena, Maya's mother, acting for Maya."""
    return patient_token(running, "maya", "RelatedPerson/elena")
