"""The publish queue shared by several workers (docs/deployment.md "Run several workers"): each
study is leased by one publisher at a time, so two workers publish it once, not twice, also when
it is queued again during its publication, after which it is published again; a study an
unavailable EHR left unpublished is due again at once; migration 0004 brings the lease to a
queue from before it (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

import pytest
from alembic import command
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common import db
from imagebridge.imaging import publish
from imagebridge.imaging.app import MIGRATIONS
from imagebridge.imaging.gate.ehr_client import EhrUnavailable
from imagebridge.imaging.publish import Publisher, queue_studies
from imagebridge.imaging.tables import metadata, publish_queue


class _Ehr:
    """Counts the studies published and those published twice at once (``overlaps``); yields to
    the loop on each, as a real HTTP call would; raises :class:`EhrUnavailable` after ``up_for``
    of them. With ``hold``, the first publication announces itself (``entered``) and waits for it."""

    def __init__(self, up_for: int | None = None, hold: asyncio.Event | None = None) -> None:
        self.puts: Counter[str] = Counter()
        self.up_for = up_for
        self.hold = hold
        self.entered = asyncio.Event()
        self.in_flight: set[str] = set()
        self.overlaps: list[str] = []

    async def publish(self, study_uid: str) -> None:
        if study_uid in self.in_flight:
            self.overlaps.append(study_uid)
        self.in_flight.add(study_uid)
        try:
            hold, self.hold = self.hold, None
            if hold is not None:
                self.entered.set()
                await hold.wait()
            await asyncio.sleep(0.001)
            if self.up_for is not None and self.puts.total() >= self.up_for:
                raise EhrUnavailable("the EHR is down")
            self.puts[study_uid] += 1
        finally:
            self.in_flight.discard(study_uid)


def _publisher(engine: AsyncEngine, ehr: _Ehr) -> Publisher:
    """The real queue handling; what one study's publication sends is not this test's subject."""
    publisher = Publisher(engine, None, None, "http://127.0.0.1/dicom-web", "urn:mrn")  # type: ignore[arg-type]
    publisher.publish = ehr.publish  # type: ignore[method-assign]
    return publisher


async def _queued(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list(await conn.scalars(select(publish_queue.c.study_uid)))


def test_two_workers_publish_each_study_once(database_url: str) -> None:
    uids = [f"1.2.3.{n}" for n in range(150)]

    async def run() -> Counter[str]:
        engine = db.create_engine(database_url, pool_size=4)
        try:
            async with engine.begin() as conn:
                await queue_studies(conn, uids, 0.0)
            ehr = _Ehr()
            first, second = _publisher(engine, ehr), _publisher(engine, ehr)
            while await _queued(engine):
                await asyncio.gather(first.publish_pending(), second.publish_pending())
            return ehr.puts
        finally:
            await engine.dispose()

    puts = asyncio.run(run())
    assert sorted(puts) == sorted(uids)
    assert set(puts.values()) == {1}


def test_studies_an_unavailable_ehr_left_are_due_again_at_once(database_url: str) -> None:
    uids = [f"1.2.4.{n}" for n in range(10)]

    async def run() -> tuple[int, Counter[str]]:
        engine = db.create_engine(database_url, pool_size=2)
        try:
            async with engine.begin() as conn:
                await queue_studies(conn, uids, 0.0)
            with pytest.raises(EhrUnavailable):
                await _publisher(engine, _Ehr(up_for=4)).publish_pending()
            left = len(await _queued(engine))
            ehr = _Ehr()
            await _publisher(engine, ehr).publish_pending()  # not held back by the first one's lease
            assert await _queued(engine) == []
            return left, ehr.puts
        finally:
            await engine.dispose()

    left, puts = asyncio.run(run())
    assert left == 6
    assert len(puts) == 6


async def _queue_again(engine: AsyncEngine, uid: str) -> None:
    """What a STOW of one more instance of the study does."""
    async with engine.begin() as conn:
        await queue_studies(conn, [uid], time.time())


def test_a_study_queued_again_while_leased_is_published_again_after_its_holder(database_url: str) -> None:
    uids = ["1.2.5.1", "1.2.5.2"]

    async def run() -> None:
        engine = db.create_engine(database_url, pool_size=4)
        try:
            async with engine.begin() as conn:
                await queue_studies(conn, uids, 0.0)
            done = asyncio.Event()
            ehr = _Ehr(hold=done)
            first, second = _publisher(engine, ehr), _publisher(engine, ehr)
            holder = asyncio.create_task(first.publish_pending())
            await ehr.entered.wait()  # the first worker is publishing uids[0], holding both
            await _queue_again(engine, uids[0])
            assert await second.publish_pending() == 0  # settled, but leased: not taken
            assert ehr.puts == Counter()
            done.set()
            assert await holder == 0
            assert ehr.puts == Counter(uids)
            assert await _queued(engine) == [uids[0]]  # the holder left the study queued again
            await _queue_again(engine, uids[1])
            await asyncio.gather(first.publish_pending(), second.publish_pending())
            assert await _queued(engine) == []
            assert ehr.puts == Counter({uids[0]: 2, uids[1]: 2})
            assert ehr.overlaps == []
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_worker_starts_no_publication_once_its_lease_may_have_run_out(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow EHR (each publication takes a tenth of the lease here) never makes a worker publish
    a study after its lease ran out, when another worker may have taken it: each publication
    ends before its lease does, the studies the worker did not reach are due again at once."""
    uids = [f"1.2.6.{n}" for n in range(20)]
    clock = [1000.0]
    monkeypatch.setattr(publish, "time", SimpleNamespace(time=lambda: clock[0]))

    async def run() -> tuple[list[float], Counter[str]]:
        engine = db.create_engine(database_url, pool_size=2)
        ehr, left = _Ehr(), []

        async def slow(study_uid: str) -> None:
            async with engine.connect() as conn:
                lease = await conn.scalar(
                    select(publish_queue.c.leased_until).where(publish_queue.c.study_uid == study_uid)
                )
            left.append(float(lease) - clock[0])  # what its lease has left as it starts
            clock[0] += publish.LEASE / 10
            await ehr.publish(study_uid)

        try:
            async with engine.begin() as conn:
                await queue_studies(conn, uids, 0.0)
            worker = _publisher(engine, ehr)
            worker.publish = slow  # type: ignore[method-assign]
            while await _queued(engine):
                await worker.publish_pending()
            return left, ehr.puts
        finally:
            await engine.dispose()

    left, puts = asyncio.run(run())
    assert puts == Counter(uids)
    assert min(left) > publish.LEASE / 10


def test_0004_schema_upgrade_leases_a_queue_from_before_it(blank_database_url: str) -> None:
    async def as_0003_left_it() -> None:
        engine = db.create_engine(blank_database_url, pool_size=1)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(text("ALTER TABLE publish_queue DROP COLUMN leased_until"))
                await conn.execute(
                    text("INSERT INTO publish_queue (study_uid, queued_at, attempts) VALUES ('1.2.6', 0, 0)")
                )
        finally:
            await engine.dispose()

    asyncio.run(as_0003_left_it())
    command.stamp(db.alembic_config(MIGRATIONS, blank_database_url), "0003")
    db.upgrade(MIGRATIONS, blank_database_url)
    db.upgrade(MIGRATIONS, blank_database_url)  # at head: nothing to do

    async def publish() -> Counter[str]:
        engine = db.create_engine(blank_database_url, pool_size=2)
        try:
            ehr = _Ehr()
            await _publisher(engine, ehr).publish_pending()
            assert await _queued(engine) == []
            return ehr.puts
        finally:
            await engine.dispose()

    assert asyncio.run(publish()) == Counter(["1.2.6"])
