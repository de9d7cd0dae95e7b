"""Reading ``application/x-www-form-urlencoded`` bodies of OAuth endpoints, strictly.

RFC 6749 §3.2 and §4.1.3: parameters are form-encoded; a parameter sent twice is an error
(§3.1), and bodies are small.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from starlette.requests import Request

from imagebridge.ehr.smart.oauth_errors import OAuthError

MAX_FORM_BYTES = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """The form parameters of a POST, each present at most once."""
    if (
        request.headers.get("content-type", "").split(";")[0].strip().lower()
        != "application/x-www-form-urlencoded"
    ):
        raise OAuthError("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "request body too large", status=413)
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
