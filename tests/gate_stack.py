"""A stack of its own for gate tests: introspection through a fault proxy, a short revocation window.

The imaging system's out-of-band ``introspection_endpoint`` names the proxy
(tests/imaging/gate/fault_proxy.py), which counts and can break introspection; the revocation
window is 2 s so the revocation promise can be observed; the EHR timeout is 3 s; capability
URLs are on. Seeded with the
demo hospital at a tiny image scale. Tokens are issued in the EHR's grant store (as its
authorization flows would) and recorded, so the secrets test can grep for every one of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import Row, select

from imagebridge.apps.seed import Seeded, seed_all, seed_ehr
from imagebridge.apps.smart_client import backend_token
from imagebridge.apps.stack import LocalStack
from imagebridge.common import db
from imagebridge.common.tokens import token_id
from imagebridge.ehr.smart.grants import Grant, GrantStore
from imagebridge.imaging.gate.audit import reader
from imagebridge.imaging.tables import audit
from tests.imaging.gate.fault_proxy import FaultProxy

GATE_SCALE = 0.05
REVOCATION_WINDOW = 2
EHR_TIMEOUT = 3.0
READ_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class GateStack:
    stack: LocalStack
    seeded: Seeded
    proxy: FaultProxy
    #: Every secret issued during the session (for the AU-03 grep).
    secrets: list[str] = field(default_factory=list)

    @property
    def fhir_base(self) -> str:
        return self.stack.ehr_settings.fhir_base

    @property
    def dicomweb_base(self) -> str:
        return self.stack.imaging_settings.dicomweb_base

    def _grants(self, grant: Grant) -> str:
        async def issue() -> str:
            engine = db.create_engine(self.stack.ehr_settings.resolved_database_url, pool_size=1)
            try:
                return await GrantStore(engine).issue(grant)
            finally:
                await engine.dispose()

        secret = asyncio.run(issue())
        self.secrets.append(secret)
        return secret

    def patient_token(
        self,
        patient: str,
        scope: str = "launch/patient patient/ImagingStudy.rs",
        *,
        fhir_user: str | None = None,
        kind: str = "access",
        client_id: str = "demo-app",
        lifetime: float = 300,
    ) -> str:
        """A patient-context token, as the EHR issues after a standalone launch."""
        now = time.time()
        return self._grants(
            Grant(
                client_id=client_id,
                scope=scope,
                expires_at=now + lifetime,
                issued_at=now,
                kind=kind,
                patient=patient,
                fhir_user=fhir_user or f"Patient/{patient}",
            )
        )

    def access_report(self, patient: str) -> list[dict[str, Any]]:
        """The patient's access report at the EHR (``AuditEvent?patient=``, AU-07), every page."""
        token = self.patient_token(patient, "patient/AuditEvent.rs")
        events: list[dict[str, Any]] = []
        url: str | None = f"{self.fhir_base}/AuditEvent?patient={patient}&_count=500"
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
            while url:
                bundle = http.get(url).json()
                events += [e["resource"] for e in bundle.get("entry", [])]
                url = next(
                    (link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None
                )
        return events

    def backend_token(self, scope: str = "system/ImagingStudy.rs") -> str:
        client = self.seeded.clients["quality-review"]
        with httpx.Client(timeout=30) as http:
            token = str(backend_token(self.fhir_base, client.backend, scope, http)["access_token"])
        self.secrets.append(token)
        return token

    def revoke(self, token: str) -> None:
        async def run() -> None:
            engine = db.create_engine(self.stack.ehr_settings.resolved_database_url, pool_size=1)
            try:
                await GrantStore(engine).revoke(token)
            finally:
                await engine.dispose()

        asyncio.run(run())

    def audit_rows(self, token: str) -> list[Row[Any]]:
        """The imaging system's audit rows of the token's requests, oldest first (journal settled)."""
        return audit_rows(self.stack, token)

    def decision_ms(self, token: str) -> float:
        """How long the imaging system took to decide the token's latest request, as it recorded
        it in the audit row (from the request reaching the gate to the record being written)."""
        rows = self.audit_rows(token)
        assert rows, "no audit record for that token"
        assert rows[-1].elapsed_ms is not None
        return float(rows[-1].elapsed_ms)

    def imaging_log(self) -> str:
        assert self.stack.imaging is not None
        return self.stack.imaging.log()


def access_line(response: httpx.Response) -> str:
    """The access-log line (after its client address) that ``response``'s request should have left:
    its path, its query's parameter names, every value ``[redacted]`` (security.md AU-04)."""
    url = response.request.url
    query = "&".join(f"{name}=[redacted]" for name, _ in url.params.multi_items())
    target = url.path + (f"?{query}" if query else "")
    return f'"{response.request.method} {target} HTTP/1.1" {response.status_code}'


def warm_up(stack: LocalStack, attempts: int = 20) -> None:
    """Let the imaging system discover the EHR and get its own token before the first timed call.

    On a busy test machine the first one may exceed the EHR timeout (an honest 503); retry it.
    """
    with httpx.Client(timeout=30) as http:
        for _ in range(attempts):
            response = http.get(
                f"{stack.imaging_settings.dicomweb_base}/studies", headers={"Authorization": "Bearer warm-up"}
            )
            if response.status_code != 503:
                return
    raise RuntimeError("the imaging system could not reach the EHR")


def start_gate_stack(
    tmp: pytest.TempPathFactory,
    name: str,
    *,
    with_studies: bool = True,
    imaging_args: tuple[str, ...] = (),
    ehr_port: int = 0,
    ehr_env: dict[str, str] | None = None,
    **imaging_env: str,
) -> Iterator[GateStack]:
    """Start, seed and finally stop a gate stack (``with_studies=False``: clients and FHIR data only;
    ``imaging_args`` go to ``imaging serve``, e.g. ``--workers 2``; ``ehr_port`` chosen in advance
    lets a test put something between the imaging system and the EHR; ``ehr_env`` are settings of
    the EHR process, ``imaging_env`` of the imaging one)."""
    data_dir = tmp.mktemp(name)
    stack = LocalStack(data_dir, ehr_port=ehr_port)
    stack.extra_ehr_env = dict(ehr_env or {})
    proxy = FaultProxy(f"http://127.0.0.1:{stack.ehr_port}/auth/introspect")
    stack.extra_imaging_env = {
        "IMAGEBRIDGE_IMAGING_INTROSPECTION_ENDPOINT": proxy.url,
        "IMAGEBRIDGE_IMAGING_REVOCATION_WINDOW": str(REVOCATION_WINDOW),
        "IMAGEBRIDGE_IMAGING_EHR_TIMEOUT": str(EHR_TIMEOUT),
        "IMAGEBRIDGE_IMAGING_CAPABILITY_URLS": "true",
        **imaging_env,
    }
    proxy.start()
    try:
        stack.provision()
        try:
            stack.start(imaging_args)
            warm_up(stack)
            seeded = (
                seed_all(stack, scale=GATE_SCALE)
                if with_studies
                else Seeded(clients=seed_ehr(stack), study_uids={}, sensitive=frozenset())
            )
            yield GateStack(stack, seeded, proxy)
        finally:
            stack.stop()
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def gate_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    """Both services, introspection through a fault proxy, a 2 s revocation window."""
    yield from start_gate_stack(tmp_path_factory, "gate-stack")


def audit_rows(stack: LocalStack, token: str) -> list[Row[Any]]:
    """The imaging system's audit rows of the token's requests, oldest first (journal settled)."""

    async def run() -> list[Row[Any]]:
        settings = stack.imaging_settings
        engine = db.create_engine(settings.resolved_database_url, pool_size=1)
        try:
            await reader(engine, settings).settle()
            async with engine.connect() as conn:
                result = await conn.execute(
                    select(audit).where(audit.c.token_id == token_id(token)).order_by(audit.c.id)
                )
                return list(result)
        finally:
            await engine.dispose()

    return asyncio.run(run())
