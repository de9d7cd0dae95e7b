"""The durable ``jti`` replay store (RFC 7523 §3 item 7) on SQLite and PostgreSQL: a key is
accepted once until it expires, an expired key may be used again, and of many simultaneous uses
exactly one wins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.common import db
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.app import migrate
from imagebridge.ehr.smart.replay import DatabaseReplayStore


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        settings = EhrSettings(data_dir=tmp_path)
        migrate(settings)
        yield settings.resolved_database_url
        return
    require_postgres()
    with temporary_database("replay") as url:
        migrate(EhrSettings(database_url=url))
        yield url


def uses(url: str, *calls: tuple[str, float]) -> list[bool]:
    async def run() -> list[bool]:
        engine = db.create_engine(url)
        try:
            store = DatabaseReplayStore(engine)
            return [await store.first_use(key, expires_at) for key, expires_at in calls]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_a_key_is_accepted_once_until_it_expires(database_url: str) -> None:
    later = time.time() + 300
    assert uses(database_url, ("iss:a", later), ("iss:a", later), ("iss:b", later)) == [True, False, True]


def test_an_expired_key_may_be_used_again_and_is_then_held(database_url: str) -> None:
    past, later = time.time() - 1, time.time() + 300
    assert uses(database_url, ("iss:a", past), ("iss:a", later), ("iss:a", later)) == [True, True, False]


def test_of_simultaneous_uses_exactly_one_wins(database_url: str) -> None:
    async def run() -> list[bool]:
        engine = db.create_engine(database_url)
        try:
            store = DatabaseReplayStore(engine)
            return await asyncio.gather(*(store.first_use("iss:same", time.time() + 300) for _ in range(12)))
        finally:
            await engine.dispose()

    assert sorted(asyncio.run(run())) == [False] * 11 + [True]


def test_one_statement_decides_many_uses(database_url: str) -> None:
    """A group's keys are decided together: a key in use, an expired one, one repeated in the group."""
    past, later = time.time() - 1, time.time() + 300

    async def run() -> list[bool]:
        engine = db.create_engine(database_url)
        try:
            store = DatabaseReplayStore(engine)
            assert await store.first_use("iss:held", later)
            assert await store.first_use("iss:expired", past)
            async with engine.begin() as conn:
                return await store.first_uses(
                    [("iss:new", later), ("iss:held", later), ("iss:expired", later), ("iss:new", later)],
                    conn,
                )
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == [True, False, True, False]
    assert uses(database_url, ("iss:new", later), ("iss:expired", later)) == [False, False]
