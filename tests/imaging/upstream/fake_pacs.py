"""A DICOMweb "PACS" that misbehaves on demand, for the proxy's error statuses (docs/proxy.md).

Every request is answered according to ``mode``: an HTML page with 200, a 500, a 401 (the
proxy's own credentials refused), a redirect elsewhere, a 400 (the query refused as such), or a
reply slower than the proxy's upstream timeout. It runs in a thread of the test process.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.threaded_app import ThreadedApp

from imagebridge.apps.stack import free_port

ANSWERS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "html": (200, b"<html><body>Please sign in</body></html>", {"content-type": "text/html"}),
    "status_500": (500, b"internal error", {"content-type": "text/plain"}),
    "unauthorized": (401, b"", {"www-authenticate": 'Basic realm="pacs"'}),
    "redirect": (302, b"", {"location": "http://evil.example/dicom-web/studies"}),
    "bad_request": (400, b'{"error": "unsupported attribute"}', {"content-type": "application/json"}),
}


class FakePacs:
    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/dicom-web"
        self.mode = "html"
        #: Every request received, as "METHOD path".
        self.requests: list[str] = []
        self._app = ThreadedApp(
            Starlette(routes=[Route("/{path:path}", self._answer, methods=["GET", "POST"])]), self.port
        )

    async def _answer(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.url.path}")
        if self.mode == "slow":
            await asyncio.sleep(30)
        status, body, headers = ANSWERS[self.mode]
        return Response(body, status, headers=headers)

    def __enter__(self) -> FakePacs:
        self._app.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._app.stop()
