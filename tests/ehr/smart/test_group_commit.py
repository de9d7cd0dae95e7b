"""Group commit of backend tokens (ehr/smart/group_commit.py): requests arriving together share one
transaction, nothing is answered before its commit, a failing group fails its own requests only,
and over HTTP the same assertion sent many times at once yields exactly one token."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from tests.conftest import RunningStack

from imagebridge.common import db, jose
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.app import migrate
from imagebridge.ehr.smart.group_commit import GroupCommit
from imagebridge.ehr.tables import assertion_jtis

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def test_concurrent_items_share_transactions_and_are_answered_after_commit(tmp_path: Path) -> None:
    settings = EhrSettings(data_dir=tmp_path)
    migrate(settings)
    groups: list[list[int]] = []

    async def run() -> tuple[list[int], int]:
        engine = db.create_engine(settings.resolved_database_url)

        async def insert(conn: AsyncConnection, items: list[int]) -> list[int]:
            groups.append(items)
            rows = [{"key": f"k{n}", "expires_at": time.time() + 60} for n in items]
            await conn.execute(assertion_jtis.insert(), rows)
            async with engine.connect() as other:  # not yet visible to anyone else
                seen = int(await other.scalar(select(func.count()).select_from(assertion_jtis)) or 0)
            return [seen] * len(items)

        group = GroupCommit(engine, insert)
        try:
            answers = await asyncio.gather(*(group.run(n) for n in range(20)))
            async with engine.connect() as conn:
                stored = int(await conn.scalar(select(func.count()).select_from(assertion_jtis)) or 0)
        finally:
            await engine.dispose()
        return answers, stored

    answers, stored = asyncio.run(run())
    assert answers == [0] * 20  # each was applied inside its uncommitted transaction
    assert stored == 20  # every answered item was committed
    assert sorted(n for items in groups for n in items) == list(range(20))
    assert len(groups) < 20  # and they shared transactions


def test_a_failing_group_fails_its_requests_and_not_the_next(tmp_path: Path) -> None:
    settings = EhrSettings(data_dir=tmp_path)
    migrate(settings)

    async def run() -> tuple[list[Any], int]:
        engine = db.create_engine(settings.resolved_database_url)

        async def apply(conn: AsyncConnection, items: list[str]) -> list[str]:
            rows = [{"key": uuid.uuid4().hex, "expires_at": time.time() + 60} for _ in items]
            await conn.execute(assertion_jtis.insert(), rows)
            if "bad" in items:
                raise RuntimeError("broken")
            return ["ok"] * len(items)

        group = GroupCommit(engine, apply)
        try:
            first = await asyncio.gather(group.run("good"), group.run("bad"), return_exceptions=True)
            second = await group.run("good")
            async with engine.connect() as conn:
                stored = int(await conn.scalar(select(func.count()).select_from(assertion_jtis)) or 0)
        finally:
            await engine.dispose()
        return [*first, second], stored

    results, stored = asyncio.run(run())
    assert [type(r).__name__ if isinstance(r, Exception) else r for r in results] == [
        "RuntimeError",
        "RuntimeError",
        "ok",
    ]
    assert stored == 1  # the failed group was rolled back


@pytest.fixture(scope="module")
def backend(ehr: RunningStack) -> tuple[str, dict[str, Any]]:
    client = ehr.seeded.clients["quality-review"]
    assert client.private_jwk is not None
    return client.client_id, client.private_jwk


def test_one_assertion_sent_many_times_at_once_gives_one_token(
    origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, key = backend
    endpoint = f"{origin}/auth/token"
    assertion = jose.client_assertion(client_id, endpoint, key)
    form = {
        "grant_type": "client_credentials",
        "scope": "system/ImagingStudy.rs",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }

    async def burst() -> list[int]:
        async with httpx.AsyncClient() as http:
            answers = await asyncio.gather(*(http.post(endpoint, data=form) for _ in range(8)))
        return sorted(a.status_code for a in answers)

    assert asyncio.run(burst()) == [200] + [401] * 7
