"""The publish queue shared by several workers (docs/deployment.md "Run several workers"): each
study is leased by one publisher at a time, so two workers publish it once, not twice; a study an
unavailable EHR left unpublished is due again at once (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common import db
from imagebridge.imaging.gate.ehr_client import EhrUnavailable
from imagebridge.imaging.publish import Publisher, queue_studies
from imagebridge.imaging.tables import publish_queue


class _Ehr:
    """Counts the studies published; yields to the loop on each, as a real HTTP call would;
    raises :class:`EhrUnavailable` after ``up_for`` of them."""

    def __init__(self, up_for: int | None = None) -> None:
        self.puts: Counter[str] = Counter()
        self.up_for = up_for

    async def publish(self, study_uid: str) -> None:
        await asyncio.sleep(0.001)
        if self.up_for is not None and self.puts.total() >= self.up_for:
            raise EhrUnavailable("the EHR is down")
        self.puts[study_uid] += 1


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
