"""Run an ASGI application under uvicorn, bound to the configured address."""

from __future__ import annotations

from typing import Any

import uvicorn


def serve(
    app: Any, host: str, port: int, *, workers: int = 1, log_level: str = "info", factory: str = ""
) -> None:
    """Serve ``app`` (or, with several workers, the import string ``factory``) until interrupted."""
    if workers > 1:
        uvicorn.run(
            factory,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            factory=True,
            proxy_headers=False,
            server_header=False,
        )
    else:
        uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
