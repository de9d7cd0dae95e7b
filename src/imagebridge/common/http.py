"""Outbound HTTP: one shared httpx client per service with explicit, short timeouts."""

from __future__ import annotations

import ssl

import httpx


def trust(ca_file: str = "") -> ssl.SSLContext:
    """Certificates verified against the system's trust store, plus ``ca_file`` (a private CA) if
    given; host names checked; TLS 1.2 or newer (security.md RS-11, RS-12)."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def client(timeout: float, *, max_connections: int = 50, ca_file: str = "") -> httpx.AsyncClient:
    """An async client that never follows redirects, never waits longer than ``timeout`` and
    verifies servers' certificates (:func:`trust`)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": "imagebridge"},
        verify=trust(ca_file),
    )
