"""Browser access to the EHR: CORS (Fetch Standard §3.2) as SMART App Launch 2.2 asks for it
("Considerations for Cross-Origin Resource Sharing (CORS) support"). Three kinds of paths:

* Public documents: the SMART and OpenID configurations, the CapabilityStatement (``metadata``),
  the JWK Set and the SMART style. Any origin may read them (``Access-Control-Allow-Origin: *``):
  they are the same for everyone, hold nothing private, and an app reads them before it has a
  token (or, for the JWK Set, to verify an id_token); ``*`` is never combined with credentials.
* The token and revocation endpoints and the FHIR REST API: only the origins of registered clients,
  the ``scheme://host[:port]`` of each enabled client's http(s) redirect URIs (SMART: "a client's
  registered origin(s)"), whether an administrator or dynamic registration (RFC 7591) added it.
  The ``Origin`` is echoed with ``Vary: Origin``; any other origin, a look-alike (another port,
  scheme or a longer host) or ``null`` gets no grant, and its preflight is 403. This is what lets
  a browser app of a public client do the PKCE code exchange, refresh, revoke and read FHIR with
  ``fetch`` from its own origin.
* Everything else gets no CORS headers: the authorization endpoint and the UI pages are
  navigations, introspection and registration are server-to-server.

No response carries ``Access-Control-Allow-Credentials``: apps send bearer tokens, not cookies.
The registered origins are read once per change of the registrations (the ``clients`` counter,
migration 0007; ehr/smart/memo.py), and only for requests that carry an ``Origin``.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from imagebridge.common import cors
from imagebridge.ehr.context import EhrContext

PUBLIC = cors.Rules(methods=("GET", "HEAD"), headers=("authorization", "accept"))
OAUTH = cors.Rules(
    methods=("POST",),
    headers=("authorization", "content-type", "accept"),
    expose=("WWW-Authenticate", "Retry-After"),
)
FHIR = cors.Rules(
    methods=("GET", "HEAD", "POST", "PUT", "DELETE"),
    headers=("authorization", "content-type", "accept", "prefer", "if-none-exist"),
    expose=("Location", "Content-Location", "ETag", "WWW-Authenticate", "Retry-After", "X-Progress"),
)
PUBLIC_PATHS = frozenset(
    {
        "/fhir/.well-known/smart-configuration",
        "/fhir/.well-known/openid-configuration",
        "/fhir/metadata",
        "/.well-known/jwks.json",
        "/ui/smart-style.json",
    }
)
OAUTH_PATHS = frozenset({"/auth/token", "/auth/revoke"})


def rules_for(path: str) -> cors.Rules | None:
    """The CORS rules of ``path``, or None where there is no CORS."""
    if path in PUBLIC_PATHS:
        return PUBLIC
    if path in OAUTH_PATHS:
        return OAUTH
    if path == "/fhir" or path.startswith("/fhir/"):
        return FHIR
    return None


class EhrCors:
    """ASGI middleware answering preflights and adding the grant, per :func:`rules_for`."""

    def __init__(self, app: ASGIApp, ctx: EhrContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rules = rules_for(str(scope["path"])) if scope["type"] == "http" else None
        if rules is None:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        public = rules is PUBLIC
        allowed = "*" if public else await self.registered(headers.get("origin"))
        if cors.is_preflight(scope, headers):
            await cors.preflight(allowed, rules, headers, vary=not public)(scope, receive, send)
            return
        await self.app(scope, receive, cors.granting(send, allowed, rules, vary=not public))

    async def registered(self, origin: str | None) -> str | None:
        """``origin`` if it is a registered client's, else None."""
        if origin is None or origin == "null":
            return None
        memo = self.ctx.memo
        generation = await memo.generation(self.ctx.engine)  # before the registrations are read
        return origin if origin in await memo.origins(generation, self.ctx.clients.origins) else None
