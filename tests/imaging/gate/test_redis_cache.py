"""The gate's cache in Redis (issue 6 §2; security.md FT-05): shared entries named by digests,
values without the token, a TTL at the entry's bound, single-flight per process, revocation kept.

A stack of its own (no studies: a QIDO search exercises the gate the same way) whose imaging
system caches in Redis database 13 on 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from tests.gate_stack import REVOCATION_WINDOW, GateStack, start_gate_stack
from tests.services import require_redis

from imagebridge.common.tokens import digest

REDIS_URL = "redis://127.0.0.1:6379/13"
KEY = re.compile(r"imagebridge:gate:(token|study):[0-9a-f]{64}(:[0-9.]+)?")


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    require_redis()
    yield from start_gate_stack(
        tmp_path_factory, "redis-gate-stack", with_studies=False, IMAGEBRIDGE_IMAGING_CACHE_URL=REDIS_URL
    )


@pytest.fixture(scope="module")
def store() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def _search(stack: GateStack, token: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.get(
            f"{stack.dicomweb_base}/studies",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        )


def test_concurrent_requests_share_one_introspection(redis_stack: GateStack) -> None:
    token = redis_stack.patient_token("alice")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as http:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
            url = f"{redis_stack.dicomweb_base}/studies"
            return [
                r.status_code
                for r in await asyncio.gather(*(http.get(url, headers=headers) for _ in range(100)))
            ]

    assert asyncio.run(burst()) == [200] * 100
    assert redis_stack.proxy.calls[digest(token)] == 1


def test_entries_are_digests_with_ttl_and_never_hold_the_token(
    redis_stack: GateStack, store: redis.Redis
) -> None:
    token = redis_stack.patient_token("alice")
    assert _search(redis_stack, token).status_code == 200
    key = f"imagebridge:gate:token:{digest(token)}"
    assert store.exists(key)
    assert 0 < store.pttl(key) <= REVOCATION_WINDOW * 1000
    for name in store.scan_iter(match="imagebridge:gate:*"):
        assert KEY.fullmatch(name.decode()), name
        value = store.get(name)
        assert value is None or token.encode() not in value
    assert token.encode() not in b"".join(n for n in store.scan_iter(match="*"))


def test_revoked_token_is_refused_within_the_window(redis_stack: GateStack) -> None:
    token = redis_stack.patient_token("alice")
    assert _search(redis_stack, token).status_code == 200
    redis_stack.revoke(token)
    time.sleep(REVOCATION_WINDOW + 0.2)
    assert _search(redis_stack, token).status_code == 401


def test_negative_answers_are_shared_too(redis_stack: GateStack, store: redis.Redis) -> None:
    token = redis_stack.patient_token("alice")
    redis_stack.revoke(token)
    assert _search(redis_stack, token).status_code == 401
    assert _search(redis_stack, token).status_code == 401
    assert redis_stack.proxy.calls[digest(token)] == 1
    assert store.exists(f"imagebridge:gate:token:{digest(token)}")
