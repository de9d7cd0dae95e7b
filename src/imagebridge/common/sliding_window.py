"""Counting attempts per key over a sliding time window, in memory, per process: the EHR's rate
limits (RFC 6819 §4.4.1.3, ehr/smart/ratelimit.py) and both services' Security Alert thresholds
(security.md AU-02)."""

from __future__ import annotations

import time
from collections import deque


class Limiter:
    """At most ``limit`` attempts per key within ``window`` seconds (memory bounded by ``max_keys``)."""

    def __init__(self, limit: int, window: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> int:
        """Seconds until ``key`` may try again (0: now)."""
        recent = self._recent(key)
        if len(recent) < self.limit:
            return 0
        return max(1, int(recent[0] + self.window - time.monotonic()) + 1)

    def count(self, key: str) -> bool:
        """Count an attempt of ``key``; True when it is the one that reaches the limit (a burst
        raises it once: the next needs the key to fall below the limit first)."""
        if len(self._failures) >= self.max_keys:
            self._failures.clear()  # bounded memory under a flood of distinct keys
        recent = self._recent(key)
        before = len(recent)
        recent.append(time.monotonic())
        if len(recent) > self.limit:
            recent.popleft()  # the last ``limit`` attempts tell everything retry_after needs
        return before == self.limit - 1

    def _recent(self, key: str) -> deque[float]:
        recent = self._failures.setdefault(key, deque())
        cutoff = time.monotonic() - self.window
        while recent and recent[0] < cutoff:
            recent.popleft()
        return recent
