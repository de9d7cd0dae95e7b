"""A durable ``jti`` replay store for client assertions (RFC 7523 §3 item 7; SMART 2.2).

Shared by every EHR worker through the database, so an assertion cannot be replayed against a
second worker or after a restart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
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

        Given ``conn``, the record is part of that transaction (kept only if it commits).
        """
        if conn is None:
            async with self.engine.begin() as own:
                return await self.first_use(key, expires_at, own)
        return (await self.first_uses([(key, expires_at)], conn))[0]

    async def first_uses(self, uses: Sequence[tuple[str, float]], conn: AsyncConnection) -> list[bool]:
        """For each (key, expires_at) of ``uses``, in ``conn``'s transaction: whether this is the key's
        first use (a key repeated within ``uses`` is used once, by its first occurrence).

        One statement decides for all of them: insert each key, or take over its row only if that
        has expired; the keys it wrote come back (RETURNING), the others were in use.
        """
        now = time.time()
        rows: dict[str, float] = {}
        for key, expires_at in uses:
            rows.setdefault(key, expires_at)
        insert: Any = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        # In key order: two workers' groups sharing keys (one assertion replayed to both) lock the
        # rows in the same order, so neither waits for the other in turn (no deadlock).
        values = insert(assertion_jtis).values([{"key": k, "expires_at": rows[k]} for k in sorted(rows)])
        statement = values.on_conflict_do_update(
            index_elements=[assertion_jtis.c.key],
            set_={"expires_at": values.excluded.expires_at},
            where=assertion_jtis.c.expires_at < now,
        ).returning(assertion_jtis.c.key)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            await conn.execute(delete(assertion_jtis).where(assertion_jtis.c.expires_at < now))
        written = set((await conn.execute(statement)).scalars())
        first: list[bool] = []
        for key, _ in uses:
            first.append(key in written)
            written.discard(key)  # a repetition within ``uses`` is a second use
        return first
