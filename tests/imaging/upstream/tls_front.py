"""An HTTPS front for the test Orthanc: the upstream PACS of proxy mode served over TLS with a
certificate made by the test (tests/security/tls_pair.py), for ``upstream_ca_file`` (docs/proxy.md).

Every request is passed on to Orthanc as it came (its ``Authorization`` included) and Orthanc's
answer is returned whole. ``max_version`` caps the TLS version the front speaks (a PACS stuck on
TLS 1.1). It runs in a thread of the test process.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Callable

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.security.tls_pair import Pem
from tests.threaded_app import ThreadedApp

from imagebridge.apps.stack import free_port

#: Orthanc's response headers not passed on: the front answers with a whole body of its own.
_HOP = frozenset({"connection", "content-length", "content-encoding", "transfer-encoding", "keep-alive"})


def _capped(
    version: ssl.TLSVersion,
) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    def factory(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL offers TLS 1.1 at level 0 only
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: the point of the front
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = version
        return context

    return factory


class TlsFront:
    def __init__(
        self, orthanc_origin: str, pem: Pem, max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    ) -> None:
        self.port = free_port()
        self.base = f"https://127.0.0.1:{self.port}/dicom-web"
        self._orthanc = orthanc_origin
        self._app = ThreadedApp(
            Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])]),
            self.port,
            ssl_certfile=str(pem.certfile),
            ssl_keyfile=str(pem.keyfile),
            ssl_context_factory=_capped(max_version),
        )

    async def _forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k != "host"}
        target = request.scope["raw_path"].decode("latin-1")
        if query := request.scope["query_string"].decode("latin-1"):
            target += f"?{query}"
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.request(
                request.method, self._orthanc + target, headers=headers, content=await request.body()
            )
        kept = {k: v for k, v in answer.headers.items() if k not in _HOP}
        return Response(answer.content, answer.status_code, headers=kept)

    def __enter__(self) -> TlsFront:
        self._app.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._app.stop()
