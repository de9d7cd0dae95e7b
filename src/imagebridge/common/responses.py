"""Small HTTP response helpers shared by both services."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """A JSON response rendered with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def bearer_challenge(error: str | None, description: str | None = None, status: int = 401) -> Response:
    """RFC 6750 §3: 401/403 with ``WWW-Authenticate: Bearer`` (no error when no token was sent)."""
    value = "Bearer"
    if error:
        value += f' error="{error}"'
        if description:
            value += f', error_description="{description}"'
    body: dict[str, Any] = {"error": error or "invalid_token"}
    if description:
        body["error_description"] = description
    return JSONResponse(body, status_code=status, headers={"WWW-Authenticate": value})
