"""The EHR's AuditTrail over the audit journal: deferred disclosures and their stand-ins.

A search's disclosures are completed after its response; a stand-in event is journaled first.
The completed events are what the database gets; the stand-in only when its process died before
completing it (ehr/audit.py, docs/audit.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from imagebridge.common import audit_journal, db
from imagebridge.common.audit_journal import decode, encode
from imagebridge.ehr import audit
from imagebridge.ehr.app import MIGRATIONS
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.tables import resources

ACTOR = audit.Actor("demo-app", "Patient/p1", "0123456789abcdef")
QUERY = "ImagingStudy?patient=p1"
NOW = "2026-12-01T10:00:00.000Z"


def _database(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ehr.sqlite3'}"
    db.upgrade(MIGRATIONS, url)
    return url


async def _events(store: Store) -> dict[str, dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(resources.c.content).where(resources.c.resource_type == "AuditEvent")
        )
        return {event["id"]: event for event in (orjson.loads(r.content) for r in rows)}


def _patients(event: dict[str, Any]) -> list[str]:
    refs = [str(e.get("what", {}).get("reference", "")) for e in event["entity"]]
    return [r for r in refs if r.startswith("Patient/")]


def test_completed_disclosures_are_written_not_their_stand_in(tmp_path: Path) -> None:
    url = _database(tmp_path)
    journal = tmp_path / "journal"

    async def run() -> None:
        engine = db.create_engine(url, pool_size=1)
        store = Store(engine)
        trail = audit.AuditTrail(store, "http://ehr/fhir", journal)
        try:

            async def later() -> Sequence[audit.Disclosure]:
                return [audit.Disclosure("p1", ["ImagingStudy/s1"], why="self")]

            trail.record(audit.SEARCH, ACTOR, 200, later, QUERY)
            [segment] = journal.glob("*.journal")
            [entry], _ = decode(segment.read_bytes())  # before the response: the stand-in only
            stand_in = entry["later"]
            assert stand_in["outcomeDesc"] == audit.UNFINISHED
            await trail.flush()
            events = await _events(store)
            assert stand_in["id"] not in events
            assert [_patients(e) for e in events.values()] == [["Patient/p1"]]
        finally:
            await trail.aclose()
            await engine.dispose()

    asyncio.run(run())


@pytest.mark.parametrize("group", [64, 1])
def test_a_dead_process_leaves_stand_ins_only_for_what_it_did_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: int
) -> None:
    """Also when its segments are replayed one per group: a stand-in is held back until the group
    holding its completion (common/audit_journal.py ``dead-partial``)."""
    monkeypatch.setattr(audit_journal, "REPLAY_SEGMENTS", group)
    url = _database(tmp_path)
    journal = tmp_path / "journal"
    journal.mkdir()
    trail = audit.AuditTrail(Store(db.create_engine(url, pool_size=1)), "http://ehr/fhir", journal)
    unfinished = trail._event(
        audit.SEARCH, ACTOR, 200, audit.Disclosure(None, why=audit.UNFINISHED), QUERY, NOW
    )
    finished = trail._event(
        audit.SEARCH, ACTOR, 200, audit.Disclosure(None, why=audit.UNFINISHED), QUERY, NOW
    )
    completed = trail._event(
        audit.SEARCH, ACTOR, 200, audit.Disclosure("p1", ["ImagingStudy/s1"]), QUERY, NOW
    )
    lines = [
        {"later": unfinished},
        {"later": finished},
        {"events": [completed], "completes": finished["id"]},
    ]
    for i, line in enumerate(lines):
        (journal / f"0000000000000000000{i}-1-dead.journal").write_bytes(encode(line))

    async def run() -> dict[str, dict[str, Any]]:
        try:
            assert await trail.journal.recover() == len(lines)
            assert await trail.journal.recover() == 0  # retired
            return await _events(trail.store)
        finally:
            await trail.store.engine.dispose()

    events = asyncio.run(run())
    assert set(events) == {unfinished["id"], completed["id"]}
    assert events[unfinished["id"]]["outcomeDesc"] == audit.UNFINISHED
    assert _patients(events[completed["id"]]) == ["Patient/p1"]


def test_events_of_a_refused_request_say_it_was_answered_503() -> None:
    """A request answered 503 because its events could not be made durable (common/audit_journal.py):
    its events, the stand-in too, are outcome 8 saying why, and keep the reason they had."""
    read = audit.audit_event(audit.READ, ACTOR, "http://ehr/fhir", 200, audit.Disclosure("p1", why="scope"))
    unfinished = audit.Disclosure(None, why=audit.UNFINISHED)
    stand_in = audit.audit_event(audit.SEARCH, ACTOR, "http://ehr/fhir", 200, unfinished, QUERY)
    (amended,) = audit.refused_entry({"events": [read]})["events"]
    assert (amended["outcome"], amended["outcomeDesc"]) == ("8", f"{audit.UNDURABLE}; scope")
    assert amended["entity"] == read["entity"]
    later = audit.refused_entry({"later": stand_in})["later"]
    assert (later["outcome"], later["outcomeDesc"]) == ("8", f"{audit.UNDURABLE}; {audit.UNFINISHED}")


def test_an_event_rewritten_after_a_failed_sync_whose_supersede_line_was_torn_is_kept_once(
    tmp_path: Path,
) -> None:
    """Power loss tore the supersede line of a rewrite (common/audit_journal.py): a replay finds
    the event twice in one group, the old segment's copy and the rewritten one saying 503. It is
    created once, as rewritten, instead of the replay failing at every attempt."""
    url = _database(tmp_path)
    journal = tmp_path / "journal"
    journal.mkdir()
    trail = audit.AuditTrail(Store(db.create_engine(url, pool_size=1)), "http://ehr/fhir", journal)
    event = trail._event(audit.READ, ACTOR, 200, audit.Disclosure("p1", ["ImagingStudy/s1"]), None, NOW)
    torn = encode({audit_journal.SUPERSEDES: [["00000000000000000001-9-aaaa.journal", 0]]})
    (journal / "00000000000000000001-9-aaaa.journal").write_bytes(encode({"events": [event]}))
    (journal / "00000000000000000002-9-bbbb.journal").write_bytes(
        encode(audit.refused_entry({"events": [event]})) + torn[:-7]
    )

    async def run() -> dict[str, dict[str, Any]]:
        try:
            assert await trail.journal.recover() == 2
            return await _events(trail.store)
        finally:
            await trail.store.engine.dispose()

    events = asyncio.run(run())
    assert [e["outcome"] for e in events.values()] == ["8"]


def test_an_event_committed_before_its_request_was_refused_takes_the_503(tmp_path: Path) -> None:
    """Another EHR process settling the journal (an AuditEvent search) may create a live writer's
    event before that writer's sync fails and amends it (its request answered 503 instead): the
    amended copy, committed next, replaces it; a copy that comes later unamended changes nothing."""
    url = _database(tmp_path)
    trail = audit.AuditTrail(Store(db.create_engine(url, pool_size=1)), "http://ehr/fhir", tmp_path / "j")
    event = trail._event(audit.READ, ACTOR, 200, audit.Disclosure("p1", ["ImagingStudy/s1"]), None, NOW)

    async def run() -> dict[str, dict[str, Any]]:
        try:
            await trail._commit([{"events": [event]}], "live")
            await trail._commit([audit.refused_entry({"events": [event]})], "own")
            await trail._commit([{"events": [event]}], "live")
            return await _events(trail.store)
        finally:
            await trail.store.engine.dispose()

    events = asyncio.run(run())
    assert [(e["outcome"], e["outcomeDesc"]) for e in events.values()] == [("8", audit.UNDURABLE)]
