"""Browser access to DICOMweb: CORS (Fetch Standard §3.2) and Cross-Origin-Resource-Policy.

A viewer served from another origin (OHIF) calls DICOMweb with ``Authorization: Bearer`` and
``Accept`` headers, so the browser first sends a preflight ``OPTIONS``. The preflight carries no
token by design and is answered here, before the gate; every real request still passes the gate.
Allowed origins come from ``ImagingSettings.cors_allowed_origins``: ``*`` (the default) answers
``Access-Control-Allow-Origin: *`` without credentials, which suits bearer tokens (they are not
cookies); a list answers the matching origin and ``Vary: Origin``.

Every DICOMweb response also carries ``Cross-Origin-Resource-Policy: cross-origin`` so that a
cross-origin-isolated page (COEP ``require-corp``) may load frames and rendered images, and
``X-Content-Type-Options: nosniff`` so that no browser reads DICOM JSON carrying markup (a
PatientName of ``<script>…``) as HTML (security.md DI-11).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOW_METHODS = "GET, HEAD, POST, OPTIONS"
ALLOW_HEADERS = (
    "authorization",
    "accept",
    "accept-encoding",
    "content-type",
    "range",
    "if-none-match",
    "if-modified-since",
    "cache-control",
)
EXPOSE_HEADERS = (
    "Content-Type, Content-Length, Content-Range, Content-Location, Warning, ETag, WWW-Authenticate"
)
MAX_AGE = "600"


class DicomwebCors:
    """ASGI middleware adding CORS, CORP and ``nosniff`` to responses under ``prefix``."""

    def __init__(self, app: ASGIApp, allowed_origins: Collection[str], prefix: str = "/dicom-web") -> None:
        self.app = app
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(o.rstrip("/") for o in allowed_origins)
        self.prefix = prefix

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if not allowed."""
        if origin is None:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.allowed else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self.preflight(origin, headers)(scope, receive, send)
            return
        allowed = self.allow_origin(origin)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Cross-Origin-Resource-Policy"] = "cross-origin"
                out["X-Content-Type-Options"] = "nosniff"
                if allowed is not None:
                    out["Access-Control-Allow-Origin"] = allowed
                    out["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                if not self.any_origin:
                    out.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def preflight(self, origin: str | None, headers: Headers) -> Response:
        """Answer a CORS preflight (Fetch §3.2.2): 204 with what may be sent, or 403."""
        allowed = self.allow_origin(origin)
        requested = {h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")}
        requested.discard("")
        method = headers["access-control-request-method"].upper()
        if allowed is None or method not in ALLOW_METHODS.split(", ") or not requested <= set(ALLOW_HEADERS):
            return PlainTextResponse(
                "CORS preflight refused: origin, method or headers not allowed",
                status_code=403,
                headers={"Vary": "Origin"} if not self.any_origin else None,
            )
        out = {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
            "Access-Control-Max-Age": MAX_AGE,
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if not self.any_origin:
            out["Vary"] = "Origin"
        return Response(status_code=204, headers=out)
