"""Reading the small bodies of OAuth endpoints (form-encoded, or JSON for registration), strictly.

RFC 6749 §3.2 and §4.1.3: parameters are form-encoded; a parameter sent twice is an error
(§3.1), and bodies are small.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from imagebridge.ehr.smart.oauth_errors import OAuthError

MAX_BODY_BYTES = 64 * 1024


async def read_body(request: Request, media_type: str, error: str) -> bytes:
    """A small request body of ``media_type``; otherwise :class:`OAuthError` ``error`` (413 if too large)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != media_type:
        raise OAuthError(error, f"the body must be {media_type}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise OAuthError(error, "request body too large", status=413)
    return body


async def read_form(request: Request) -> dict[str, str]:
    """The form parameters of a POST, each present at most once."""
    body = await read_body(request, "application/x-www-form-urlencoded", "invalid_request")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "the body is not UTF-8") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise OAuthError("invalid_request", f"parameter {name!r} was sent more than once")
        form[name] = value
    return form
