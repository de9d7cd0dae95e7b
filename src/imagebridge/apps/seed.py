"""Filling a running stack with the demo hospital (apps.demo_data).

FHIR resources and client registrations go into the EHR directly (an administrator's job);
studies enter the imaging system through STOW-RS, as a modality would send them, and reach the
EHR through the imaging system's publishing. Finally the EHR labels the sensitive study, as its
own clinical workflow would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.apps.stack import LocalStack
from imagebridge.apps.synthetic import dataset_bytes, generate_study, study_uid_for
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.fhir.store import Query, TokenCriterion
from imagebridge.ehr.smart.users import UserStore


@dataclass(frozen=True)
class SeededClient:
    client_id: str
    kind: str
    scope: str
    private_jwk: dict[str, Any] | None = None
    group: str | None = None
    redirect_uris: tuple[str, ...] = ()
    #: Registered as an imaging source: stores imaging for any PatientID (docs/policy.md).
    imaging_source: bool = False

    @property
    def backend(self) -> BackendClient:
        assert self.private_jwk is not None
        return BackendClient(self.client_id, self.private_jwk)


@dataclass(frozen=True)
class Seeded:
    clients: dict[str, SeededClient]
    study_uids: dict[str, str]  # accession number → Study Instance UID
    sensitive: frozenset[str]  # Study Instance UIDs labeled restricted


def _key(directory: Path, client_id: str, alg: jose.Algorithm) -> dict[str, Any]:
    return jose.load_or_create_private_jwk(directory / f"{client_id}.json", alg)


def seed_ehr(stack: LocalStack) -> dict[str, SeededClient]:
    """Register demo clients and FHIR resources in the EHR database (idempotent)."""
    keys = stack.data_dir / "client-keys"
    clients = {
        "quality-review": SeededClient(
            "quality-review",
            "backend",
            demo_data.BACKEND_SCOPE,
            _key(keys, "quality-review", "ES384"),
            group="Group/quality-review",
        ),
        "modality": SeededClient(
            "modality",
            "backend",
            demo_data.MODALITY_SCOPE,
            _key(keys, "modality", "RS384"),
            imaging_source=True,
        ),
        "demo-app": SeededClient(
            "demo-app",
            "public",
            "launch/patient openid fhirUser offline_access patient/*.rs",
            redirect_uris=("http://127.0.0.1:8090/callback",),
        ),
    }

    async def run() -> None:
        admin = Admin(stack.ehr_settings)
        try:
            for resource in demo_data.fhir_resources():
                await admin.put_resource(resource)
            users = UserStore(admin.engine)
            for user in demo_data.USERS:
                await users.put(user.username, user.password, user.fhir_user, user.display_name, (user.role,))
            for c in clients.values():
                if await admin.clients.get(c.client_id) is None:
                    await admin.add_client(
                        c.client_id,
                        c.kind,  # type: ignore[arg-type]
                        scope=c.scope,
                        jwks=jose.public_jwks(c.private_jwk) if c.private_jwk else None,
                        redirect_uris=c.redirect_uris,
                        group=c.group,
                        imaging_source=c.imaging_source,
                    )
        finally:
            await admin.close()

    asyncio.run(run())
    return clients


def _multipart(parts: Iterator[bytes], boundary: str) -> Iterator[bytes]:
    for part in parts:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def stow_studies(stack: LocalStack, modality: SeededClient, scale: float) -> dict[str, str]:
    """Send every demo study by STOW-RS, as a modality would; returns accession → study UID."""
    assert stack.imaging is not None
    base = stack.imaging_settings.dicomweb_base
    uids: dict[str, str] = {}
    with httpx.Client(timeout=120) as http:
        token = backend_token(stack.ehr_settings.fhir_base, modality.backend, modality.scope, http)[
            "access_token"
        ]
        for spec, _ in demo_data.studies(scale):
            boundary = "imagebridge-demo-boundary"
            body = _multipart((dataset_bytes(ds) for ds in generate_study(spec)), boundary)
            response = http.post(
                f"{base}/studies",
                content=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json",
                },
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"STOW of {spec.description} failed: {response.status_code} {response.text[:500]}"
                )
            uids[spec.accession_number] = study_uid_for(spec)
    return uids


def label_and_wait(stack: LocalStack, uids: dict[str, str], timeout: float = 120.0) -> frozenset[str]:
    """Wait until every study is published, label the sensitive ones restricted, add their reports."""
    sensitive = {uids[spec.accession_number] for spec, is_sensitive in demo_data.studies() if is_sensitive}

    async def run() -> None:
        admin = Admin(stack.ehr_settings)
        try:
            deadline = time.monotonic() + timeout
            while True:
                query = Query(
                    "ImagingStudy",
                    [
                        TokenCriterion(
                            "identifier", tuple(("urn:dicom:uid", f"urn:oid:{u}") for u in uids.values())
                        )
                    ],
                    count=1000,
                )
                found, _ = await admin.store.search(query)
                if len(found) == len(uids):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(found)} of {len(uids)} studies reached the EHR")
                await asyncio.sleep(0.2)
            for study in found:
                uid = next(i["value"] for i in study["identifier"] if i.get("system") == "urn:dicom:uid")
                if uid.removeprefix("urn:oid:") in sensitive:
                    security = study.get("meta", {}).get("security", [])
                    if demo_data.RESTRICTED not in security:
                        study["meta"] = {
                            **study.get("meta", {}),
                            "security": [*security, demo_data.RESTRICTED],
                        }
                        await admin.put_resource(study)
                report = demo_data.diagnostic_report(study)
                if report is not None:
                    await admin.put_resource(report)
        finally:
            await admin.close()

    asyncio.run(run())
    return frozenset(sensitive)


def seed_all(stack: LocalStack, scale: float = 1.0) -> Seeded:
    """Seed a started stack: EHR registry and resources first, then studies through STOW-RS."""
    clients = seed_ehr(stack)
    uids = stow_studies(stack, clients["modality"], scale)
    return Seeded(clients=clients, study_uids=uids, sensitive=label_and_wait(stack, uids))


def manifest(stack: LocalStack, seeded: Seeded) -> dict[str, Any]:
    """The demo.json manifest: every URL, account and client a tutorial needs."""
    ehr, imaging = stack.ehr_settings, stack.imaging_settings
    return {
        "ehr": {
            "fhir_base": ehr.fhir_base,
            "smart_configuration": f"{ehr.fhir_base}/.well-known/smart-configuration",
            "issuer": ehr.fhir_base,
        },
        "imaging": {"dicomweb_base": imaging.dicomweb_base},
        "users": [
            {
                "username": u.username,
                "password": u.password,
                "fhirUser": u.fhir_user,
                "name": u.display_name,
                "role": u.role,
            }
            for u in demo_data.USERS
        ],
        "clients": [
            {
                "client_id": c.client_id,
                "kind": c.kind,
                "scope": c.scope,
                **({"private_jwk": c.private_jwk} if c.private_jwk else {}),
                **({"group": c.group} if c.group else {}),
                **({"imaging_source": True} if c.imaging_source else {}),
                **({"redirect_uris": list(c.redirect_uris)} if c.redirect_uris else {}),
            }
            for c in seeded.clients.values()
        ],
        "studies": seeded.study_uids,
    }


def write_manifest(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)
