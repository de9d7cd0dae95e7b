"""Failed-attempt rate limiting of the login form and the token endpoint (RFC 6749 §10.10, RFC 6819).

RFC 6819 §4.4.1.3 (online guessing of codes), §4.5.3, §4.6.3.

In memory, per process (a deployment with N workers allows N times the budget; documented in
docs/smart-app-developers.md). Only failures count: after ``limit`` failures for one key within
``window`` seconds further attempts get 429 with ``Retry-After`` until the oldest failure ages out.
Keys: the username at login, the client_id at the token endpoint.
"""

from __future__ import annotations

import time
from collections import deque


class FailureLimiter:
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

    def failed(self, key: str) -> None:
        if len(self._failures) >= self.max_keys:
            self._failures.clear()  # bounded memory under a flood of distinct keys
        self._recent(key).append(time.monotonic())

    def _recent(self, key: str) -> deque[float]:
        recent = self._failures.setdefault(key, deque())
        cutoff = time.monotonic() - self.window
        while recent and recent[0] < cutoff:
            recent.popleft()
        return recent


#: 10 wrong passwords per username per 5 minutes.
LOGIN = FailureLimiter(limit=10, window=300)
#: 30 rejected token requests per client per minute.
TOKEN = FailureLimiter(limit=30, window=60)
