"""OAuth 2.0 error responses (RFC 6749 §5.2) with the no-store headers SMART requires."""

from __future__ import annotations

from starlette.responses import Response

from imagebridge.common.responses import JSONResponse

#: RFC 6749 §5.1 and SMART 2.2: token responses are never cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    """An error the token, introspection or registration endpoint reports to the client."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def response(self) -> Response:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
        return JSONResponse(
            {"error": self.error, "error_description": self.description},
            status_code=self.status,
            headers=headers,
        )


def no_store_json(body: dict[str, object]) -> Response:
    return JSONResponse(body, headers=NO_STORE)
