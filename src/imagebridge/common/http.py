"""Outbound HTTP: one shared httpx client per service with explicit, short timeouts."""

from __future__ import annotations

import httpx


def client(timeout: float, *, max_connections: int = 50) -> httpx.AsyncClient:
    """An async client that never follows redirects and never waits longer than ``timeout``."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": "imagebridge"},
    )
