"""A proxy in front of the EHR's FHIR API for tests of the imaging system's EHR traffic."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.threaded_app import ThreadedApp

from imagebridge.apps.stack import free_port


class FhirProxy:
    """Between the imaging system and the EHR's FHIR API: forwards every call. It can lose the
    EHR's answer to the next ``lose`` batch Bundles (the imaging system's AuditEvents) after the
    EHR committed them (what a connection cut at that instant looks like to the imaging system: no
    answer, here a 502), answer batch Bundles with 405 while ``no_batch`` (an EHR without the
    batch interaction), and
    hold ImagingStudy searches for ``search_delay`` seconds (a slow EHR)."""

    def __init__(self, ehr_port: int) -> None:
        self.ehr_port = ehr_port
        self.target = f"http://127.0.0.1:{ehr_port}/fhir"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self.lose = 0
        self.lost = 0
        self.search_delay = 0.0
        self.no_batch = False
        routes = [
            Route("/fhir", self._forward, methods=["POST"]),
            Route("/fhir/{path:path}", self._forward, methods=["GET", "POST", "PUT"]),
        ]
        self._app = ThreadedApp(Starlette(routes=routes), self.port)

    def start(self) -> None:
        self._app.start()

    def stop(self) -> None:
        self._app.stop()

    async def _forward(self, request: Request) -> Response:
        path = request.path_params.get("path", "")
        if request.method == "POST" and not path and self.no_batch:
            return Response(b"", 405)
        if request.method == "GET" and path == "ImagingStudy" and self.search_delay:
            await asyncio.sleep(self.search_delay)
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                answer = await http.request(
                    request.method,
                    f"{self.target}/{path}" if path else self.target,
                    params=request.query_params.multi_items(),
                    content=await request.body(),
                    headers=headers,
                )
        except httpx.HTTPError:
            return Response(b"", 502)  # the EHR is stopped
        if request.method == "POST" and not path and answer.status_code == 200 and self.lose:
            self.lose -= 1
            self.lost += 1
            return Response(b"", 502)
        kept = {k: v for k, v in answer.headers.items() if k in ("content-type", "location")}
        return Response(answer.content, answer.status_code, headers=kept)
