"""Journaled imaging audit records reach the ``audit`` table once each (SQLite and PostgreSQL):
a replay inserts nothing twice, a streamed body's count lands on its record, and a record without
a patient gets the study's patient (gate/audit.py)."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from starlette.responses import Response

from imagebridge.common import audit_journal, db
from imagebridge.common.audit_journal import DurableResponses, Origin
from imagebridge.imaging.gate.audit import UNDURABLE, AuditLog, refused_record
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


def test_the_record_of_a_request_refused_for_want_of_a_durable_record_says_503(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``audit_fsync`` on and fdatasync fails: the client gets the 503 and so does the record, which
    keeps what had been decided in ``detail`` (gate/audit.py: a record says what the client got)."""
    failures = [OSError(errno.EIO, "Input/output error")]

    def fdatasync(fd: int) -> None:
        if failures:
            raise failures.pop()

    monkeypatch.setattr(audit_journal.os, "fdatasync", fdatasync)
    started: list[int] = []

    async def run() -> list[Any]:
        engine = db.create_engine(database_url, pool_size=2)
        log = AuditLog(engine, MRN, tmp_path / "journal", fsync=True)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            log.journal.append(_record("c" * 32, "alice", streaming=True))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"pixels"})

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.append(message["status"])

        def refuse() -> Response:
            return Response(b"", 503, {"Retry-After": "5"})

        try:
            await DurableResponses(app, lambda: log.journal, refuse)({"type": "http"}, None, send)
            await log.journal.flush()
            async with engine.connect() as conn:
                rows = await conn.execute(
                    select(
                        audit.c.outcome, audit.c.status, audit.c.bytes_sent, audit.c.streaming, audit.c.detail
                    )
                )
                return list(rows)
        finally:
            await log.aclose()
            await engine.dispose()

    rows = asyncio.run(run())
    assert started == [503]
    decided = f"{UNDURABLE} (decided: allow 200)"
    assert [tuple(r) for r in rows] == [("unavailable", 503, 0, False, decided)]


def test_a_record_rewritten_after_a_failed_sync_whose_supersede_line_was_torn_is_kept_once(
    database_url: str, tmp_path: Path
) -> None:
    """Power loss tore the supersede line of a rewrite (common/audit_journal.py), so a replay finds
    the record twice in one group: the old segment's copy and the rewritten, amended one. The
    replay commits (PostgreSQL refuses an insert that meets one key twice) and keeps the later
    copy, which says what the client got; a streamed record's count still lands."""
    journal = tmp_path / "journal"
    journal.mkdir()
    refused = _record("d" * 32, "alice", streaming=True)
    streamed = _record("e" * 32, "alice", streaming=True)
    count = {"key": "e" * 32, "sent": 77}
    amended = {**refused, "outcome": "unavailable", "status": 503, "streaming": False, "detail": UNDURABLE}
    torn = audit_journal.encode({audit_journal.SUPERSEDES: [["00000000000000000001-9-aaaa.journal", 0]]})
    (journal / "00000000000000000001-9-aaaa.journal").write_bytes(
        audit_journal.encode(refused) + audit_journal.encode(streamed)
    )
    (journal / "00000000000000000002-9-bbbb.journal").write_bytes(
        b"".join(map(audit_journal.encode, (amended, streamed, count))) + torn[:-7]
    )

    async def run() -> list[Any]:
        engine = db.create_engine(database_url, pool_size=1)
        try:
            assert await AuditLog(engine, MRN, journal).journal.recover() == 2
            async with engine.connect() as conn:
                columns = (audit.c.record_key, audit.c.status, audit.c.bytes_sent, audit.c.streaming)
                rows = await conn.execute(select(*columns).order_by(audit.c.record_key))
                return [tuple(r) for r in rows]
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == [("d" * 32, 503, 0, False), ("e" * 32, 200, 77, False)]


@pytest.mark.parametrize("streaming", [False, True])
def test_a_record_committed_before_its_request_was_refused_takes_the_503(
    database_url: str, tmp_path: Path, streaming: bool
) -> None:
    """Another process settling the journal (an audit report) may commit a live writer's record
    before that writer's sync fails and amends it (its request answered 503 instead): the amended
    copy, committed next, replaces it; a copy that comes later unamended changes nothing."""

    async def run() -> list[Any]:
        engine = db.create_engine(database_url, pool_size=1)
        try:
            log = AuditLog(engine, MRN, tmp_path / "journal")
            record = _record("f" * 32, "alice", streaming=streaming)
            await log._commit([record], "live")
            await log._commit([refused_record(record)], "own")
            await log._commit([record], "live")
            async with engine.connect() as conn:
                columns = (audit.c.outcome, audit.c.status, audit.c.bytes_sent, audit.c.streaming)
                return [tuple(r) for r in await conn.execute(select(*columns))]
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == [("unavailable", 503, 0, False)]
