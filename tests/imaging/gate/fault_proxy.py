"""A tiny HTTP proxy in front of the EHR's introspection endpoint, for gate tests.

The imaging system is pointed at it through the out-of-band ``introspection_endpoint`` setting.
It forwards every call to the real EHR and counts calls per token digest (and records the write
questions it answered); a test can switch it to misbehave (security.md FT-02, FT-03, RS-03, RS-08)
or stop it (FT-01: connection refused).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.threaded_app import ThreadedApp

from imagebridge.apps.stack import free_port
from imagebridge.common.tokens import digest
from imagebridge.imaging.gate.gate import WRITE_PATIENT
from imagebridge.imaging.gate.token_info import IMAGING_GRANT

#: Modes: how the proxy answers. Anything not listed forwards unchanged.
GARBAGE: dict[str, tuple[int, bytes]] = {
    "status_500": (500, b'{"active": true}'),
    "not_json": (200, b"<html>gateway</html>"),
    "no_active": (200, b'{"scope": "patient/ImagingStudy.rs", "exp": 9999999999}'),
    "string_active": (200, b'{"active": "true", "scope": "patient/ImagingStudy.rs", "exp": 9999999999}'),
    "json_list": (200, b"[true]"),
}


class FaultProxy:
    def __init__(self, target: str) -> None:
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/introspect"
        self.mode = "forward"
        #: Mode "slow": seconds before the real answer is forwarded.
        self.slow_seconds = 30.0
        #: Mode "skewed": seconds the EHR's clock is ahead (negative: behind) of the imaging host's.
        self.clock_offset = 0
        self.calls: Counter[str] = Counter()
        #: The PatientIDs of the write questions (docs/gate.md "Writing") answered by the EHR.
        self.write_answers: list[str] = []
        self._app = ThreadedApp(
            Starlette(routes=[Route("/introspect", self._introspect, methods=["POST"])]), self.port
        )

    async def _introspect(self, request: Request) -> Response:
        body = await request.body()
        form = dict(httpx.QueryParams(body.decode()))
        self.calls[digest(form.get("token", ""))] += 1
        mode = self.mode
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if mode in GARBAGE:
            status, content = GARBAGE[mode]
            return Response(content, status, media_type="application/json")
        async with httpx.AsyncClient(timeout=10) as http:
            upstream = await http.post(
                self.target,
                content=body,
                headers={
                    "Authorization": request.headers.get("authorization", ""),
                    "Content-Type": "application/x-www-form-urlencoded",
                },
            )
        answer: Any = upstream.json()
        asked = form.get(WRITE_PATIENT)
        if mode == "no_write_decision":  # only the answers to write questions lose the member
            mode = "no_write" if asked is not None else "forward"
        if isinstance(answer, dict) and answer.get("active"):
            answer = self._rewrite(mode, answer, self.clock_offset)
        # recorded once the answer is sent, so a test may break the EHR right after it
        recorded = BackgroundTask(self.write_answers.append, asked) if asked is not None else None
        return Response(
            orjson.dumps(answer), upstream.status_code, media_type="application/json", background=recorded
        )

    @staticmethod
    def _rewrite(mode: str, answer: dict[str, Any], offset: int) -> dict[str, Any]:
        if mode == "other_audience":
            return {**answer, "aud": ["https://other-resource-server.example/dicom-web"]}
        if mode == "expired":  # beyond any clock-skew leeway
            return {**answer, "exp": int(time.time()) - 600}
        if mode == "skewed":  # an EHR whose clock is off: its times shift, its active decision holds
            return {**answer, "exp": answer["exp"] + offset, "iat": answer["iat"] + offset}
        if mode == "no_patient":  # as a plain SMART EHR that forgot the launch context would answer
            return {k: v for k, v in answer.items() if k not in ("patient", IMAGING_GRANT)}
        if mode == "no_grant":  # a plain SMART EHR: no imaging grant at all
            return {k: v for k, v in answer.items() if k != IMAGING_GRANT}
        if mode == "no_write":  # an imaging grant without its write member
            grant = {k: v for k, v in answer[IMAGING_GRANT].items() if k != "write"}
            return {**answer, IMAGING_GRANT: grant}
        return answer

    def start(self) -> None:
        self._app.start()

    def stop(self) -> None:
        self._app.stop()
