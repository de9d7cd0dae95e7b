"""Browser access to DICOMweb: CORS (Fetch Standard §3.2) and Cross-Origin-Resource-Policy.

A viewer served from another origin (OHIF) calls DICOMweb with ``Authorization: Bearer`` and
``Accept`` headers, so the browser first sends a preflight ``OPTIONS``. The preflight carries no
token by design and is answered here, before the gate; every real request still passes the gate.
Allowed origins come from ``ImagingSettings.cors_allowed_origins``: none by default (no grant to
any page: security.md RS-11); a list of the viewers' origins answers the matching origin with
``Vary: Origin``; ``*``, set explicitly, answers ``Access-Control-Allow-Origin: *`` to every origin
(never with credentials: bearer tokens are not cookies; common/cors.py).

Every DICOMweb response also carries ``Cross-Origin-Resource-Policy: cross-origin`` so that a
cross-origin-isolated page (COEP ``require-corp``) may load frames and rendered images, and
``X-Content-Type-Options: nosniff`` so that no browser reads DICOM JSON carrying markup (a
PatientName of ``<script>…``) as HTML (security.md DI-11).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from imagebridge.common import cors

RULES = cors.Rules(
    methods=("GET", "HEAD", "POST", "OPTIONS"),
    headers=(
        "authorization",
        "accept",
        "accept-encoding",
        "content-type",
        "range",
        "if-none-match",
        "if-modified-since",
        "cache-control",
    ),
    expose=(
        "Content-Type",
        "Content-Length",
        "Content-Range",
        "Content-Location",
        "Warning",
        "ETag",
        "WWW-Authenticate",
    ),
)
CORP = {"Cross-Origin-Resource-Policy": "cross-origin"}
EVERY_RESPONSE = {**CORP, "X-Content-Type-Options": "nosniff"}


class DicomwebCors:
    """ASGI middleware adding CORS, CORP and ``nosniff`` to responses under ``prefix``."""

    def __init__(self, app: ASGIApp, allowed_origins: Collection[str], prefix: str = "/dicom-web") -> None:
        self.app = app
        self.any_origin = "*" in allowed_origins
        self.allowed = frozenset(o for o in map(cors.origin_of, allowed_origins) if o is not None)
        #: The answer depends on ``Origin`` only when some origins, not all, are granted.
        self.vary = bool(self.allowed) and not self.any_origin
        self.prefix = prefix

    def allow_origin(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None if not allowed. ``*`` goes
        out also without ``Origin``: that answer says no ``Vary: Origin`` (Fetch §3.2.5)."""
        if self.any_origin:
            return "*"
        if origin is None:
            return None
        return origin if origin in self.allowed else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if cors.is_preflight(scope, headers):
            await self.preflight(headers.get("origin"), headers)(scope, receive, send)
            return
        allowed = self.allow_origin(headers.get("origin"))
        granted = cors.granting(send, allowed, RULES, vary=self.vary, extra=EVERY_RESPONSE)
        await self.app(scope, receive, granted)

    def preflight(self, origin: str | None, headers: Headers) -> Response:
        """Answer a CORS preflight (Fetch §3.2.2): 204 with what may be sent, or 403."""
        return cors.preflight(self.allow_origin(origin), RULES, headers, vary=self.vary, extra=CORP)
