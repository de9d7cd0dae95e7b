"""A bounded, single-flight cache for EHR answers (RFC 7662 §4 on caching introspection).

Entries are keyed by a digest (tokens are never stored raw), expire at the time their producer
states (never past the token's ``exp``), and concurrent lookups of one missing key share one
producer call: a viewer loading 1,000 frames causes one introspection, not 1,000.

Where entries live is a :class:`Backend`: this process's memory by default
(:class:`MemoryBackend`), or Redis shared by several workers (``redis_cache.RedisBackend``).
Single-flight is per process in both cases.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

V = TypeVar("V")


class Backend(Protocol[V]):
    """Storage of ``key → value`` until an absolute expiry time (epoch seconds)."""

    async def load(self, key: str) -> V | None: ...

    async def save(self, key: str, value: V, expires_at: float) -> None: ...

    async def clear(self) -> None: ...


class MemoryBackend(Generic[V]):
    """An LRU in this process's memory."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()

    async def load(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    async def save(self, key: str, value: V, expires_at: float) -> None:
        self._entries[key] = (value, expires_at)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def clear(self) -> None:
        self._entries.clear()

    def keys(self) -> list[str]:
        """The keys held now (for inspection: they are digests, never tokens)."""
        return list(self._entries)


class SingleFlightCache(Generic[V]):
    """``key → value`` with expiry whose misses are computed once per key at a time (per process)."""

    def __init__(self, backend: Backend[V] | None = None) -> None:
        self.backend: Backend[V] = backend if backend is not None else MemoryBackend()
        self._inflight: dict[str, asyncio.Future[tuple[V, float]]] = {}

    async def peek(self, key: str) -> V | None:
        """The cached value, if there is one that has not expired."""
        return await self.backend.load(key)

    async def put(self, key: str, value: V, expires_at: float) -> None:
        """Remember ``value`` until ``expires_at`` (ignored when that is already past)."""
        if expires_at > time.time():
            await self.backend.save(key, value, expires_at)

    async def get(self, key: str, produce: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        """The cached value, or the one ``produce`` returns with its expiry time."""
        pending = self._inflight.get(key)
        if pending is not None:
            return (await asyncio.shield(pending))[0]
        cached = await self.peek(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)  # another task may have started while we looked
        if pending is not None:
            return (await asyncio.shield(pending))[0]
        future: asyncio.Future[tuple[V, float]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value, expires_at = await produce()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result((value, expires_at))
            await self.put(key, value, expires_at)
            return value
        finally:
            del self._inflight[key]

    async def clear(self) -> None:
        await self.backend.clear()
