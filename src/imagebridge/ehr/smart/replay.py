"""A durable ``jti`` replay store for client assertions (RFC 7523 §3 item 7; SMART 2.2).

Shared by every EHR worker through the database, so an assertion cannot be replayed against a
second worker or after a restart.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagebridge.ehr.tables import assertion_jtis

#: Seconds between deletions of expired keys (an expired key never blocks a new use meanwhile).
PRUNE_INTERVAL = 60.0


class DatabaseReplayStore:
    """Atomic first-use check of ``iss``+``jti`` keys, pruned after they expire."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._next_prune = 0.0

    async def first_use(self, key: str, expires_at: float, conn: AsyncConnection | None = None) -> bool:
        """Record ``key`` until ``expires_at``; False if it is recorded and unexpired.

        One statement decides: insert the key, or take over its row only if that has expired. Given
        ``conn``, the record is part of that transaction (kept only if it commits).
        """
        if conn is None:
            async with self.engine.begin() as own:
                return await self.first_use(key, expires_at, own)
        now = time.time()
        insert: Any = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        statement = (
            insert(assertion_jtis)
            .values(key=key, expires_at=expires_at)
            .on_conflict_do_update(
                index_elements=[assertion_jtis.c.key],
                set_={"expires_at": expires_at},
                where=assertion_jtis.c.expires_at < now,
            )
        )
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            await conn.execute(delete(assertion_jtis).where(assertion_jtis.c.expires_at < now))
        recorded = await conn.execute(statement)
        return recorded.rowcount == 1
