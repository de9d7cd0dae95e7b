"""A durable ``jti`` replay store for client assertions (RFC 7523 §3 item 7; SMART 2.2).

Shared by every EHR worker through the database, so an assertion cannot be replayed against a
second worker or after a restart.
"""

from __future__ import annotations

import time

from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.ehr.tables import assertion_jtis


class DatabaseReplayStore:
    """Atomic first-use check of ``iss``+``jti`` keys, pruned after they expire."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def first_use(self, key: str, expires_at: float) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(assertion_jtis).where(assertion_jtis.c.expires_at < time.time()))
                await conn.execute(insert(assertion_jtis).values(key=key, expires_at=expires_at))
        except IntegrityError:
            return False
        return True
