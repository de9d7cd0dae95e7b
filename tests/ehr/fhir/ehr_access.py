"""Direct EHR administration for tests: grants issued straight into the EHR database (the running
EHR process reads the same database), and FHIR resources put by the administrator."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from tests.conftest import RunningStack

from imagebridge.apps.demo_data import MRN_SYSTEM
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.fhir.store import Query, TokenCriterion
from imagebridge.ehr.smart.grants import Grant, GrantStore

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def issue(
    running: RunningStack,
    client_id: str,
    scope: str,
    *,
    patient: str | None = None,
    fhir_user: str | None = None,
    kind: str = "access",
) -> str:
    """An access (or refresh, in a family of its own) token for ``client_id`` with exactly
    ``scope`` and context."""

    async def run() -> str:
        admin = Admin(running.stack.ehr_settings)
        try:
            now = time.time()
            family = uuid.uuid4().hex if kind == "refresh" else None
            grant = Grant(client_id, scope, now + 600, now, kind, patient, fhir_user, family=family)
            return await GrantStore(admin.engine).issue(grant)
        finally:
            await admin.close()

    return asyncio.run(run())


def put(running: RunningStack, *resources: dict[str, Any]) -> None:
    """Create or replace resources as the EHR administrator."""

    async def run() -> None:
        admin = Admin(running.stack.ehr_settings)
        try:
            for resource in resources:
                await admin.put_resource(resource)
        finally:
            await admin.close()

    asyncio.run(run())


def add_client(running: RunningStack, kind: str, scope: str, group: str | None = None) -> str:
    """Register a fresh client (its own identity, so consents naming it stay private to a test)."""
    client_id = f"test-{kind}-{uuid.uuid4().hex[:8]}"
    jwks = jose.public_jwks(jose.generate_private_jwk()) if kind == "backend" else None

    async def run() -> None:
        admin = Admin(running.stack.ehr_settings)
        try:
            await admin.add_client(client_id, kind, scope=scope, jwks=jwks, group=group)  # type: ignore[arg-type]
        finally:
            await admin.close()

    asyncio.run(run())
    return client_id


def cohort(group_id: str, *patients: str) -> dict[str, Any]:
    """A Group of patients, as a backend client's registered cohort."""
    return {
        "resourceType": "Group",
        "id": group_id,
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{p}"}} for p in patients],
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def study(
    sid: str, patient: str, modality: str = "CT", labels: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """An ImagingStudy of ``patient`` whose Study Instance UID derives from its id (:func:`unique`)."""
    return {
        "resourceType": "ImagingStudy",
        "id": sid,
        "meta": {"security": labels or []},
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{int(sid.split('-')[-1], 16)}"}],
        "subject": {"reference": f"Patient/{patient}"},
        "modality": [{"system": DCM, "code": modality}],
        "started": "2025-01-02T10:00:00Z",
    }


def published_study(uid: str, mrn: str, started: str = "2025-02-03") -> dict[str, Any]:
    """An ImagingStudy as the imaging system publishes it: the patient by MRN (resolved by the EHR)."""
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
        "subject": {"identifier": {"system": MRN_SYSTEM, "value": mrn}},
        "modality": [{"system": DCM, "code": "CT"}],
        "started": started,
    }


def get(running: RunningStack, path: str, token: str | None, **params: str) -> httpx.Response:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{running.fhir_base}/{path}", params=params, headers=headers, timeout=30)


def accessions(bundle: dict[str, Any]) -> set[str]:
    """Accession numbers of the ImagingStudy matches in a searchset."""
    return {
        i["value"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "ImagingStudy"
        for i in e["resource"].get("identifier", [])
        if i.get("type", {}).get("coding", [{}])[0].get("code") == "ACSN"
    }


def study_id(running: RunningStack, accession: str) -> str:
    """The FHIR id of a seeded study, looked up by its Study Instance UID (administrator view)."""
    uid = running.seeded.study_uids[accession]

    async def run() -> str:
        admin = Admin(running.stack.ehr_settings)
        try:
            crit = TokenCriterion("identifier", (("urn:dicom:uid", f"urn:oid:{uid}"),))
            found, _ = await admin.store.search(Query("ImagingStudy", [crit]))
            return str(found[0]["id"])
        finally:
            await admin.close()

    return asyncio.run(run())
