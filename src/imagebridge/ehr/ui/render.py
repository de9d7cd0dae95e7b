"""HTML pages of the EHR UI: Jinja2 with autoescaping, and the headers every page carries.

RFC 9700 §4.16 (clickjacking: ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``),
§4.2.4 (``Referrer-Policy: no-referrer``); pages load nothing from other origins and are never
cached (they carry CSRF tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse, Response

_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:; "
    "base-uri 'none'; object-src 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def page(template: str, context: dict[str, Any], status: int = 200) -> Response:
    html = _env.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def secure(response: Response) -> Response:
    """Add the page security headers to a redirect or other non-template response."""
    response.headers.update(SECURITY_HEADERS)
    return response
