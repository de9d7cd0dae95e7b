"""How the audit publisher turns batch-response entries into spool state (gate/audit_publish.py),
on SQLite and PostgreSQL: records go in Bundles of at most BATCH, an accepted entry (201, or 200
for a record the EHR already had) is marked published, a failed one stays in the spool and the
failure is raised for the backoff (4xx as PublishRefused, 5xx as EhrUnavailable).

The EHR here answers as scripted: what a real EHR does with the Bundles is tested against the
running services in test_audit_publish.py and tests/ehr/fhir/test_fhir_batch.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.imaging.gate.test_audit_commit import MRN, _record

from imagebridge.common import db
from imagebridge.imaging.gate.audit import AuditLog
from imagebridge.imaging.gate.audit_publish import BATCH, RECORD_SYSTEM, AuditPublisher
from imagebridge.imaging.gate.ehr_client import EhrUnavailable, PublishRefused
from imagebridge.imaging.tables import audit


class ScriptedEhr:
    """Answers each Bundle's entries with the next script line's statuses ("201" for all by
    default); ``batch=False``: refuses every Bundle with 405 and takes single creates."""

    client_id = "imaging"

    def __init__(self, *script: list[str], batch: bool = True) -> None:
        self.script = list(script)
        self.batch = batch
        self.bundles: list[list[dict[str, Any]]] = []
        self.creates: list[str] = []

    async def fhir_create(self, resource_type: str, resource: dict[str, Any], if_none_exist: str) -> None:
        assert resource["resourceType"] == resource_type == "AuditEvent"
        self.creates.append(if_none_exist)

    async def fhir_batch(self, entries: list[dict[str, Any]], *, wait: float) -> list[dict[str, Any]]:
        self.bundles.append(entries)
        if not self.batch:
            raise PublishRefused(405, "no batch here")
        statuses = self.script.pop(0) if self.script else ["201 Created"] * len(entries)
        return [{"status": s} for s in statuses]


def _published(rows: list[Any]) -> list[bool]:
    return [bool(r.published) for r in rows]


def test_failed_entries_stay_spooled_and_accepted_ones_are_marked(database_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        engine = db.create_engine(database_url, pool_size=2)
        log = AuditLog(engine, MRN, tmp_path / "journal")
        try:
            for i in range(BATCH * 2 + 50):
                log.journal.append(_record(f"{i:032x}", "alice"))
            await log.journal.flush()

            async def spool() -> list[Any]:
                async with engine.connect() as conn:
                    return list(
                        await conn.execute(select(audit.c.id, audit.c.published).order_by(audit.c.id))
                    )

            first = ["201 Created", "503 Service Unavailable", "200 OK"] + ["201 Created"] * (BATCH - 3)
            ehr = ScriptedEhr(first)
            publisher = AuditPublisher(engine, ehr, source="s", mrn_system=MRN, written=asyncio.Event())
            with pytest.raises(EhrUnavailable, match="503"):
                await publisher.drain()
            rows = await spool()
            assert _published(rows)[:3] == [True, False, True]
            assert sum(_published(rows)) == BATCH - 1
            entry = ehr.bundles[0][1]
            assert entry["request"] == {
                "method": "POST",
                "url": "AuditEvent",
                "ifNoneExist": f"entity:identifier={RECORD_SYSTEM}|imaging/{rows[1].id}",
            }
            assert entry["resource"]["resourceType"] == "AuditEvent"

            ehr.script = [["403 Forbidden"] + ["201 Created"] * (BATCH - 1)]
            with pytest.raises(PublishRefused):
                await publisher.drain()  # the failed record first, then 99 new ones
            assert len(ehr.bundles[1]) == BATCH
            assert not _published(await spool())[1]

            assert await publisher.drain() == 52  # the refused record and the 51 never sent
            assert all(_published(await spool()))
            assert [len(b) for b in ehr.bundles] == [BATCH, BATCH, 52]
        finally:
            await log.aclose()
            await engine.dispose()

    asyncio.run(run())


def test_an_ehr_without_batch_gets_one_create_per_record(database_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        engine = db.create_engine(database_url, pool_size=2)
        log = AuditLog(engine, MRN, tmp_path / "journal")
        try:
            for i in range(3):
                log.journal.append(_record(f"{i:032x}", "alice"))
            await log.journal.flush()
            ehr = ScriptedEhr(batch=False)
            publisher = AuditPublisher(engine, ehr, source="s", mrn_system=MRN, written=asyncio.Event())
            assert await publisher.drain() == 3
            assert len(ehr.bundles) == 1  # tried once, then no more Bundles
            async with engine.connect() as conn:
                ids = [r.id for r in await conn.execute(select(audit.c.id).order_by(audit.c.id))]
            assert ehr.creates == [f"entity:identifier={RECORD_SYSTEM}|imaging/{i}" for i in ids]
        finally:
            await log.aclose()
            await engine.dispose()

    asyncio.run(run())
