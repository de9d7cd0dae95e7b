"""Run an ASGI application under uvicorn, bound to the configured address (docs/deployment.md).

With a certificate and key configured the service speaks HTTPS itself, TLS 1.2 or newer only
(security.md RS-11); without, plain HTTP for a TLS-terminating reverse proxy in front. Proxy headers
(``X-Forwarded-*``, ``Forwarded``) are never trusted: every URL the services hand out is built
from the configured public URL (RS-10). Access logs show no query values (AU-04).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from imagebridge.common import log_redaction
from imagebridge.common.splice import TRANSPORT


class ConnectionProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with each request's scope naming its connection's transport
    (``scope["extensions"][TRANSPORT]["transport"]``) for :mod:`imagebridge.common.splice`."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {TRANSPORT: {"transport": self.transport}}


def _tls_factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context hook (module level, so worker processes can unpickle it): the context
    uvicorn builds from its settings (certificate, key, password, ciphers, client certificates,
    ALPN), refusing anything older than TLS 1.2 (RFC 8996)."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def serve(
    app: Any,
    host: str,
    port: int,
    *,
    workers: int = 1,
    log_level: str = "info",
    factory: str = "",
    tls_certfile: str = "",
    tls_keyfile: str = "",
) -> None:
    """Serve ``app`` (or, with several workers, the import string ``factory``) until interrupted."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "proxy_headers": False,
        "server_header": False,
        "http": ConnectionProtocol,
        "log_config": log_redaction.LOGGING_CONFIG,
    }
    if tls_certfile:
        options |= {
            "ssl_certfile": tls_certfile,
            "ssl_keyfile": tls_keyfile or None,
            "ssl_context_factory": _tls_factory,
        }
    if workers > 1:
        uvicorn.run(factory, workers=workers, factory=True, **options)
    else:
        uvicorn.run(app, **options)
