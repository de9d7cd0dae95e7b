"""Journaled imaging audit records reach the ``audit`` table once each (SQLite and PostgreSQL):
a replay inserts nothing twice, a streamed body's count lands on its record, and a record without
a patient gets the study's patient (gate/audit.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from imagebridge.common import db
from imagebridge.common.audit_journal import Origin
from imagebridge.imaging.gate.audit import AuditLog
from imagebridge.imaging.tables import audit, studies

MRN = "urn:mrn"


def _record(key: str, patient: str | None, *, streaming: bool = False) -> dict[str, Any]:
    return dict(
        record_key=key,
        at=time.time(),
        client_id="demo-app",
        user=None,
        patient=patient,
        token_id="0123456789abcdef",
        operation="retrieve",
        study_uid="1.2.3",
        series_uid=None,
        sop_uid=None,
        outcome="allow",
        status=200,
        bytes_sent=0 if streaming else 10,
        request_path="/dicom-web/studies/1.2.3",
        detail=None,
        streaming=streaming,
        elapsed_ms=0.4,
    )


def test_records_are_committed_once_with_counts_and_patients(database_url: str, tmp_path: Path) -> None:
    async def run() -> list[Any]:
        engine = db.create_engine(database_url, pool_size=2)
        log = AuditLog(engine, MRN, tmp_path / "journal")
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    insert(studies).values(
                        study_uid="1.2.3", patient_id="MRN-7", study_json=b"{}", updated_at=0
                    )
                )
            entries = [
                _record("a" * 32, "alice"),
                _record("b" * 32, None, streaming=True),
                {"key": "b" * 32, "sent": 12345},
            ]
            for entry in entries:
                log.journal.append(entry)
            await log.journal.flush()
            assert log.written.is_set()
            await log._commit(entries, "dead")  # a replay of the same lines
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        audit.c.record_key, audit.c.patient, audit.c.bytes_sent, audit.c.streaming
                    ).order_by(audit.c.id)
                )
                return list(rows)
        finally:
            await log.aclose()
            await engine.dispose()

    rows = asyncio.run(run())
    assert [tuple(r) for r in rows] == [
        ("a" * 32, "alice", 10, False),
        ("b" * 32, f"{MRN}|MRN-7", 12345, False),
    ]


def test_a_streamed_count_reaches_its_record_in_any_order(database_url: str, tmp_path: Path) -> None:
    """The count is final whether it comes in the record's batch, in a later one, after another
    process replayed the record unfinished, or before a replay read before the count."""
    after_replay, before_stale, later = "c" * 32, "d" * 32, "e" * 32

    async def run() -> list[Any]:
        engine = db.create_engine(database_url, pool_size=2)
        log = AuditLog(engine, MRN, tmp_path / "journal")
        try:
            batches: list[tuple[list[dict[str, Any]], Origin]] = [
                ([_record(after_replay, "p", streaming=True)], "live"),
                ([_record(after_replay, "p", streaming=True), {"key": after_replay, "sent": 7}], "own"),
                ([_record(before_stale, "p", streaming=True), {"key": before_stale, "sent": 8}], "own"),
                ([_record(before_stale, "p", streaming=True)], "live"),
                ([_record(later, "p", streaming=True)], "own"),
                ([{"key": later, "sent": 9}], "own"),
            ]
            for entries, origin in batches:
                await log._commit(entries, origin)
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(audit.c.record_key, audit.c.bytes_sent, audit.c.streaming).order_by(audit.c.id)
                )
                return list(rows)
        finally:
            await log.aclose()
            await engine.dispose()

    assert [tuple(r) for r in asyncio.run(run())] == [
        (after_replay, 7, False),
        (before_stale, 8, False),
        (later, 9, False),
    ]
