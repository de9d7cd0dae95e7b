"""Migration 0002 turns an existing audit table into the EHR publisher's spool (SQLite and
PostgreSQL), and the publisher lease admits one holder at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.common import db
from imagebridge.imaging.app import MIGRATIONS
from imagebridge.imaging.gate.audit_publish import AuditPublisher
from imagebridge.imaging.tables import metadata


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'imaging.db'}"
        return
    require_postgres()
    with temporary_database("spool") as url:
        yield url


async def _as_0001_left_it(url: str) -> None:
    """The schema of a database migrated to 0001 before 0002 existed, with one audit record."""
    engine = db.create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(text("DROP INDEX ix_audit_published"))
            for column in ("elapsed_ms", "streaming", "published"):
                await conn.execute(text(f"ALTER TABLE audit DROP COLUMN {column}"))
            await conn.execute(text("DROP TABLE leases"))
            await conn.execute(
                text(
                    "INSERT INTO audit (at, operation, outcome, status, bytes_sent) "
                    "VALUES (1, 'search', 'allow', 200, 0)"
                )
            )
    finally:
        await engine.dispose()


def test_0002_makes_existing_records_pending_publication(database_url: str) -> None:
    asyncio.run(_as_0001_left_it(database_url))
    command.stamp(db.alembic_config(MIGRATIONS, database_url), "0001")
    db.upgrade(MIGRATIONS, database_url)
    db.upgrade(MIGRATIONS, database_url)  # at head: nothing to do

    async def check() -> None:
        engine = db.create_engine(database_url, pool_size=2)
        try:
            async with engine.connect() as conn:
                columns = await conn.run_sync(lambda c: {x["name"] for x in inspect(c).get_columns("audit")})
            assert {"elapsed_ms", "streaming", "published"} <= columns
            first, second = (
                AuditPublisher(engine, None, source="s", mrn_system="m", written=asyncio.Event())  # type: ignore[arg-type]
                for _ in range(2)
            )
            pending = await first._batch()
            assert [r.id for r in pending] == [1]  # the old record is published too
            assert await first._lease() is not None
            assert await second._lease() is None  # one publisher at a time
            assert await first._lease() is not None  # renewed by its holder
        finally:
            await engine.dispose()

    asyncio.run(check())


def test_a_fresh_database_has_the_spool_from_0001(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    db.upgrade(MIGRATIONS, url)

    async def columns() -> set[str]:
        engine = db.create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return set(
                    await conn.run_sync(lambda c: [x["name"] for x in inspect(c).get_columns("audit")])
                )
        finally:
            await engine.dispose()

    assert {"elapsed_ms", "streaming", "published"} <= asyncio.run(columns())
