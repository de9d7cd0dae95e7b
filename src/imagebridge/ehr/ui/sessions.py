"""Browser sessions of the EHR's own web UI: an HttpOnly, SameSite=Lax cookie naming a server-side row.

Each session carries its own anti-CSRF token (RFC 6749 §10.12: the authorization endpoint's forms
must be protected); signing in issues a fresh session id (no fixation) and moves the pending
authorization requests over to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.tokens import digest, new_secret, same
from imagebridge.ehr.tables import auth_requests, browser_sessions

COOKIE = "ib_session"
LIFETIME = 8 * 3600


@dataclass(frozen=True)
class Session:
    digest: str
    username: str | None
    csrf: str

    def csrf_ok(self, submitted: str | None) -> bool:
        return bool(submitted) and same(submitted or "", self.csrf)


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def current(self, request: Request) -> Session | None:
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(browser_sessions).where(
                            browser_sessions.c.digest == digest(cookie),
                            browser_sessions.c.expires_at > time.time(),
                        )
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else Session(row["digest"], row["username"], row["csrf"])

    async def start(self, username: str | None = None) -> tuple[str, Session]:
        """A new session: (cookie value, session)."""
        cookie, csrf = new_secret(), new_secret()
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(delete(browser_sessions).where(browser_sessions.c.expires_at < now))
            await conn.execute(
                insert(browser_sessions).values(
                    digest=digest(cookie), username=username, csrf=csrf, expires_at=now + LIFETIME
                )
            )
        return cookie, Session(digest(cookie), username, csrf)

    async def sign_in(self, old: Session, username: str) -> tuple[str, Session]:
        """Replace ``old`` by a signed-in session, keeping its pending authorization requests."""
        cookie, session = await self.start(username)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(auth_requests)
                .where(auth_requests.c.session == old.digest)
                .values(session=session.digest)
            )
            await conn.execute(delete(browser_sessions).where(browser_sessions.c.digest == old.digest))
        return cookie, session

    async def end(self, session: Session) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(browser_sessions).where(browser_sessions.c.digest == session.digest))

    async def end_all(self, username: str) -> int:
        """Sign ``username`` out everywhere; how many sessions ended."""
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(browser_sessions).where(browser_sessions.c.username == username))
        return int(done.rowcount)

    async def expiry(self, digest: str) -> float | None:
        """When the signed-in session ``digest`` ends, or None if it has ended (signed out or expired)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(browser_sessions.c.expires_at).where(
                        browser_sessions.c.digest == digest,
                        browser_sessions.c.username.is_not(None),
                        browser_sessions.c.expires_at > time.time(),
                    )
                )
            ).first()
        return None if row is None else float(row.expires_at)


def set_cookie(response: Response, cookie: str, request: Request, origin: str) -> None:
    """Set the session cookie, ``Secure`` when ``request`` came over TLS or the EHR's public
    ``origin`` is https (behind a TLS-terminating proxy the last hop is plain HTTP; RS-11)."""
    secure = request.url.scheme == "https" or origin.startswith("https://")
    response.set_cookie(
        COOKIE, cookie, max_age=LIFETIME, path="/", httponly=True, samesite="lax", secure=secure
    )
