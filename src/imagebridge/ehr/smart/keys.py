"""The EHR's own signing keys (ID tokens), persisted and rotatable, published as a JWK Set.

OIDC Core §10.1.1: a new key is published before it signs, and a retired key stays in the JWKS
until tokens it signed have expired.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common import jose
from imagebridge.ehr.tables import signing_keys

#: How long a retired key stays published after rotation (longer than any ID token lives).
RETIRED_KEY_GRACE = 24 * 3600


class SigningKeys:
    """Load, create and rotate the EHR's RS256 signing keys."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def active(self) -> dict[str, Any]:
        """The current signing key, creating the first one on demand."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(signing_keys.c.private_jwk)
                    .where(signing_keys.c.retired_at.is_(None))
                    .order_by(signing_keys.c.created_at.desc())
                )
            ).first()
        if row is not None:
            key: dict[str, Any] = orjson.loads(row.private_jwk)
            return key
        return await self.rotate()

    async def rotate(self) -> dict[str, Any]:
        """Create a new active key and retire the previous ones."""
        jwk = jose.generate_private_jwk("RS256")
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(signing_keys).where(signing_keys.c.retired_at.is_(None)).values(retired_at=now)
            )
            await conn.execute(
                insert(signing_keys).values(
                    kid=jwk["kid"], private_jwk=orjson.dumps(jwk).decode(), created_at=now
                )
            )
        return jwk

    async def public_jwks(self) -> dict[str, Any]:
        """Every key that is active or retired within the grace period."""
        await self.active()
        cutoff = time.time() - RETIRED_KEY_GRACE
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(signing_keys.c.private_jwk).where(
                    (signing_keys.c.retired_at.is_(None)) | (signing_keys.c.retired_at > cutoff)
                )
            )
            return jose.public_jwks(*(orjson.loads(r.private_jwk) for r in rows))
