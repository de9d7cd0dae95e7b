"""Issued access and refresh tokens: opaque 256-bit secrets, stored only as SHA-256 digests.

Opaque tokens (not JWTs) let the EHR revoke any token at once (RFC 7009): every resource server
learns a token's meaning only through introspection (RFC 7662).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import LABEL_STYLE_TABLENAME_PLUS_COL, ColumnElement, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagebridge.common.tokens import digest, new_secret
from imagebridge.ehr.smart.clients import Client, client_from_row
from imagebridge.ehr.smart.group_commit import GroupCommit
from imagebridge.ehr.smart.replay import DatabaseReplayStore
from imagebridge.ehr.tables import clients, tokens


@dataclass(frozen=True)
class Grant:
    """What a token stands for: who asked, for what, in which context, until when."""

    client_id: str
    scope: str
    expires_at: float
    issued_at: float
    kind: str = "access"
    patient: str | None = None
    fhir_user: str | None = None
    sub: str | None = None
    family: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    revoked: bool = False
    #: online_access: the digest of the EHR sign-in session the grant lives with.
    session: str | None = None

    def active(self, now: float | None = None) -> bool:
        return not self.revoked and (now or time.time()) < self.expires_at


#: A Backend Services token to issue: the assertion's replay key, until when it is kept, the grant.
BackendIssue = tuple[str, float, Grant]


class GrantStore:
    """Issue, look up and revoke tokens."""

    def __init__(self, engine: AsyncEngine, replay: DatabaseReplayStore | None = None) -> None:
        self.engine = engine
        self.replay = replay or DatabaseReplayStore(engine)
        #: Backend Services tokens, committed in groups (one fsync for a burst).
        self.backend: GroupCommit[BackendIssue, str | None] = GroupCommit(engine, self._spend_and_issue)

    async def issue(self, grant: Grant, conn: AsyncConnection | None = None) -> str:
        """A new token for ``grant``; given ``conn``, stored in that transaction."""
        if conn is None:
            async with self.engine.begin() as own:
                return await self.issue(grant, own)
        return (await self.issue_many([grant], conn))[0]

    async def issue_many(self, grants: Sequence[Grant], conn: AsyncConnection) -> list[str]:
        """New tokens for ``grants``, stored in ``conn``'s transaction by one statement."""
        secrets = [new_secret() for _ in grants]
        if grants:
            await conn.execute(insert(tokens), [_row(s, g) for s, g in zip(secrets, grants, strict=True)])
        return secrets

    async def _spend_and_issue(self, conn: AsyncConnection, wanted: list[BackendIssue]) -> list[str | None]:
        """SMART Backend Services: each assertion's ``jti`` recorded with its token, in one
        transaction; None for an assertion already used (its token is not issued)."""
        first = await self.replay.first_uses([(key, expires_at) for key, expires_at, _ in wanted], conn)
        fresh = [grant for (_, _, grant), ok in zip(wanted, first, strict=True) if ok]
        issued = iter(await self.issue_many(fresh, conn))
        return [next(issued) if ok else None for ok in first]

    async def lookup(self, secret: str, kind: str = "access") -> Grant | None:
        """The grant behind ``secret`` if it is a token of ``kind`` (active or not)."""
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(tokens).where(tokens.c.digest == digest(secret), tokens.c.kind == kind)
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _grant(dict(row))

    async def lookup_with_client(self, secret: str) -> tuple[Grant, Client | None] | None:
        """The access grant behind ``secret`` (active or not) and its client's registration as it is
        now (None if gone), read together: one query where a bearer check would otherwise make two."""
        query = (
            select(tokens, clients)
            .outerjoin(clients, clients.c.client_id == tokens.c.client_id)
            .where(tokens.c.digest == digest(secret), tokens.c.kind == "access")
            .set_label_style(LABEL_STYLE_TABLENAME_PLUS_COL)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        client = {k.removeprefix("clients_"): v for k, v in row.items() if k.startswith("clients_")}
        grant = _grant({k.removeprefix("tokens_"): v for k, v in row.items() if k.startswith("tokens_")})
        return grant, client_from_row(client) if client["client_id"] is not None else None

    async def revoke(self, secret: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(tokens).where(tokens.c.digest == digest(secret)).values(revoked=True))

    async def revoke_family(self, family: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(tokens).where(tokens.c.family == family).values(revoked=True))

    async def revoke_sub(self, sub: str) -> int:
        """Revoke every token a user's authorizations produced; how many were live."""
        return await self._revoke(tokens.c.sub == sub)

    async def revoke_client(self, client_id: str) -> int:
        """Revoke every token issued to a client; how many were live."""
        return await self._revoke(tokens.c.client_id == client_id)

    async def _revoke(self, which: ColumnElement[bool]) -> int:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(tokens).where(which, tokens.c.revoked.is_(False)).values(revoked=True)
            )
        return int(done.rowcount)

    async def families_of(self, sub: str) -> list[tuple[str, str, str]]:
        """(family, client_id, scope) of each live grant a user made ("connected apps")."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(tokens.c.family, tokens.c.client_id, tokens.c.scope)
                .where(
                    tokens.c.sub == sub,
                    tokens.c.family.is_not(None),
                    tokens.c.revoked.is_(False),
                    tokens.c.expires_at > time.time(),
                )
                .order_by(tokens.c.issued_at.desc())
            )
            seen: dict[str, tuple[str, str, str]] = {}
            for row in rows:
                seen.setdefault(row.family, (row.family, row.client_id, row.scope))
        return list(seen.values())

    async def rotate(self, secret: str) -> bool:
        """Retire a refresh token on use; False if it was already retired (a replay)."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(tokens)
                .where(tokens.c.digest == digest(secret), tokens.c.revoked.is_(False))
                .values(revoked=True)
            )
        return done.rowcount == 1


def _row(secret: str, grant: Grant) -> dict[str, Any]:
    """The ``tokens`` row of a new token (its digest, never the secret)."""
    return {
        "digest": digest(secret),
        "kind": grant.kind,
        "client_id": grant.client_id,
        "scope": grant.scope,
        "patient": grant.patient,
        "fhir_user": grant.fhir_user,
        "sub": grant.sub,
        "family": grant.family,
        "context": orjson.dumps(grant.context).decode(),
        "session": grant.session,
        "issued_at": grant.issued_at,
        "expires_at": grant.expires_at,
        "revoked": False,
    }


def _grant(row: Mapping[str, Any]) -> Grant:
    return Grant(
        client_id=row["client_id"],
        scope=row["scope"],
        expires_at=row["expires_at"],
        issued_at=row["issued_at"],
        kind=row["kind"],
        patient=row["patient"],
        fhir_user=row["fhir_user"],
        sub=row["sub"],
        family=row["family"],
        context=orjson.loads(row["context"] or "{}"),
        revoked=bool(row["revoked"]),
        session=row["session"],
    )
