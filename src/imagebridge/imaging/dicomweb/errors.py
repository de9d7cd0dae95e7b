"""DICOMweb error responses (PS3.18 §8.6 status codes; ARCHITECTURE.md "Status codes").

A resource outside the caller's authorization gets exactly the bytes of an unknown UID's 404,
so a response never reveals that another patient's study exists.
"""

from __future__ import annotations

import orjson
from starlette.responses import Response

NOT_FOUND_BODY = orjson.dumps({"error": "not_found", "message": "no such study, series or instance"})


class DicomwebError(Exception):
    """A client error answered with ``status`` and a clear message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return Response(
            orjson.dumps({"error": _ERRORS.get(self.status, "bad_request"), "message": self.message}),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


_ERRORS = {
    400: "bad_request",
    403: "forbidden",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
}


def not_found() -> Response:
    """The one 404 body for unknown and unauthorized resources alike."""
    return Response(NOT_FOUND_BODY, status_code=404, media_type="application/json")
