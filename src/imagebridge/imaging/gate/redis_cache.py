"""Redis as the shared store of the gate's cache, for several workers or hosts (RFC 7662 §4).

Each entry is one Redis key named by a digest (never a token) with a millisecond expiry at the
entry's own bound (``PXAT``), so nothing outlives the token's ``exp`` or the revocation window
even if every worker stops. Values are JSON that never contain the token. Single-flight stays
per process (:class:`~imagebridge.imaging.gate.cache.SingleFlightCache`); across processes the
worst case is one introspection per worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import orjson
import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from imagebridge.imaging.gate.ehr_client import EhrUnavailable
from imagebridge.imaging.gate.token_info import TokenInfo

V = TypeVar("V")


class RedisBackend(Generic[V]):
    """Entries under ``{prefix}{key}``, encoded with ``encode``/``decode`` (JSON-ready values)."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        prefix: str,
        encode: Callable[[V], Any],
        decode: Callable[[Any], V],
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.encode = encode
        self.decode = decode

    async def load(self, key: str) -> V | None:
        try:
            raw = await self.client.get(self.prefix + key)
        except RedisError as exc:
            raise EhrUnavailable(f"the decision cache is unavailable ({type(exc).__name__})") from exc
        if raw is None:
            return None
        entry = orjson.loads(raw)
        if entry["e"] <= time.time():  # never trust a clock-skewed server past the bound
            return None
        return self.decode(entry["v"])

    async def save(self, key: str, value: V, expires_at: float) -> None:
        data = orjson.dumps({"v": self.encode(value), "e": expires_at})
        try:
            await self.client.set(self.prefix + key, data, pxat=int(expires_at * 1000))
        except RedisError as exc:
            raise EhrUnavailable(f"the decision cache is unavailable ({type(exc).__name__})") from exc

    async def clear(self) -> None:
        async for name in self.client.scan_iter(match=f"{self.prefix}*"):
            await self.client.delete(name)


def connect(url: str) -> redis_asyncio.Redis:
    """A Redis client for ``redis://…`` with short timeouts (an unreachable cache fails closed)."""
    client: redis_asyncio.Redis = redis_asyncio.Redis.from_url(
        url, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    return client


def gate_backends(url: str) -> tuple[RedisBackend[TokenInfo], RedisBackend[bool], redis_asyncio.Redis]:
    """The gate's two caches (introspection answers, study decisions) in the Redis at ``url``."""
    client = connect(url)
    tokens: RedisBackend[TokenInfo] = RedisBackend(
        client, "imagebridge:gate:token:", TokenInfo.to_json, TokenInfo.from_json
    )
    studies: RedisBackend[bool] = RedisBackend(client, "imagebridge:gate:study:", bool, bool)
    return tokens, studies, client
