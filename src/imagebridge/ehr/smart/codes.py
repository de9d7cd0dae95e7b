"""Authorization codes (RFC 6749 §4.1.2) and EHR-launch handles (SMART App Launch 2.2 "launch").

Both are opaque 256-bit secrets stored as SHA-256 digests, short-lived and single-use: a code
lives 60 s and is bound to its client, redirect URI, PKCE challenge and the approved grant; a
second redemption is refused and revokes every token the first one produced (RFC 6749 §4.1.2).
A launch handle lives 300 s and is bound to the browser session that launched it, the app and
the chart's patient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.tokens import digest, new_secret
from imagebridge.ehr.tables import auth_codes, launches

CODE_LIFETIME = 60
LAUNCH_LIFETIME = 300


@dataclass(frozen=True)
class Redemption:
    """The outcome of presenting a code: its grant, and whether it had been used before."""

    grant: dict[str, Any]
    family: str
    expired: bool
    reused: bool


class CodeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def issue(self, client_id: str, grant: dict[str, Any]) -> str:
        code = new_secret()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(auth_codes).values(
                    digest=digest(code),
                    client_id=client_id,
                    grant=orjson.dumps(grant).decode(),
                    family=new_secret(),
                    expires_at=time.time() + CODE_LIFETIME,
                    used=False,
                )
            )
        return code

    async def redeem(self, code: str, client_id: str) -> Redemption | None:
        """Mark ``code`` used (atomically) if it is ``client_id``'s; None when it is not theirs."""
        key = digest(code)
        async with self.engine.begin() as conn:
            first_use = await conn.execute(
                update(auth_codes)
                .where(
                    auth_codes.c.digest == key,
                    auth_codes.c.client_id == client_id,
                    auth_codes.c.used.is_(False),
                )
                .values(used=True)
            )
            row = (
                (
                    await conn.execute(
                        select(auth_codes).where(
                            auth_codes.c.digest == key, auth_codes.c.client_id == client_id
                        )
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        return Redemption(
            grant=orjson.loads(row["grant"]),
            family=row["family"],
            expired=row["expires_at"] <= time.time(),
            reused=first_use.rowcount == 0,
        )


class LaunchStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def issue(self, session: str, client_id: str, patient: str) -> str:
        handle = new_secret()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(launches).values(
                    digest=digest(handle),
                    session=session,
                    client_id=client_id,
                    patient=patient,
                    expires_at=time.time() + LAUNCH_LIFETIME,
                    used=False,
                )
            )
        return handle

    async def consume(self, handle: str, session: str | None, client_id: str) -> str | None:
        """The launch's patient if ``handle`` is live, unused, this session's and this app's."""
        if session is None:
            return None
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(launches)
                .where(
                    launches.c.digest == digest(handle),
                    launches.c.used.is_(False),
                    launches.c.expires_at > time.time(),
                    launches.c.session == session,
                    launches.c.client_id == client_id,
                )
                .values(used=True)
            )
            if taken.rowcount != 1:
                return None
            row = (
                await conn.execute(select(launches.c.patient).where(launches.c.digest == digest(handle)))
            ).first()
        return None if row is None else str(row.patient)
