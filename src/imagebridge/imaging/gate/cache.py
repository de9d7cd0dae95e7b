"""A bounded, single-flight cache for EHR answers (RFC 7662 §4 on caching introspection).

Entries are keyed by a digest (tokens are never stored raw), expire at the time their producer
states (never past the token's ``exp``), and concurrent lookups of one missing key share one
producer call: a viewer loading 1,000 frames causes one introspection, not 1,000.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class SingleFlightCache(Generic[V]):
    """An LRU of ``key → (value, expires_at)`` whose misses are computed once per key at a time."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[V, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[tuple[V, float]]] = {}

    def peek(self, key: str) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: V, expires_at: float) -> None:
        """Remember ``value`` until ``expires_at`` (ignored when that is already past)."""
        if expires_at > time.time():
            self._entries[key] = (value, expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def get(self, key: str, produce: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        """The cached value, or the one ``produce`` returns with its expiry time."""
        cached = self.peek(key)
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
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
            self.put(key, value, expires_at)
            return value
        finally:
            del self._inflight[key]

    def clear(self) -> None:
        self._entries.clear()
