"""An ASGI app served by uvicorn in a thread of the test process (fake peers for fault tests)."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp


class ThreadedApp:
    """``app`` on 127.0.0.1:``port`` until :meth:`stop` (which a later :meth:`start` may undo);
    ``options`` are further ``uvicorn.Config`` arguments (``ssl_certfile``, …)."""

    def __init__(self, app: ASGIApp, port: int, **options: Any) -> None:
        self.app = app
        self.port = port
        self.options = options
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", **self.options
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test server on port {self.port} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            self._thread.join(10)
            self._server = None
