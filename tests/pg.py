"""Throw-away PostgreSQL databases for one test run (created and dropped by the tests)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def analyze(url: str) -> None:
    """``ANALYZE`` the database at ``url`` (what autovacuum does after bulk changes: this machine's
    PostgreSQL runs with autovacuum off, and a planner without statistics picks slow plans)."""
    name = url.rpartition("/")[2]

    async def run() -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=name)
        try:
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def temporary_database(label: str) -> Iterator[str]:
    """A new, empty database; yields its SQLAlchemy URL and drops it afterwards."""
    name = f"ib_{label}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
