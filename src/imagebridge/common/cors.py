"""CORS (Fetch Standard §3.2) as both services answer it: origins, preflights, the grant.

A grant is ``Access-Control-Allow-Origin`` naming one origin (or ``*``) and never
``Access-Control-Allow-Credentials``: browser apps send bearer tokens in ``Authorization``, a header
their script sets, not cookies, so no request needs the credentials mode ``include`` (§3.2.5).
Where the grant depends on the ``Origin`` header the response says ``Vary: Origin`` (§3.2.5), so
that no cache hands one origin's grant to another.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Scope, Send

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """The ASCII serialization of ``url``'s origin (RFC 6454 §6.2), as a browser sends it in
    ``Origin``: ``scheme://host[:port]``, scheme and host in lower case, the scheme's default port
    left out, an IPv6 address compressed. None for anything but an http(s) URL with a host (a
    native app's private-use scheme has an opaque origin, serialized ``null``, which is never
    granted anything) and for a host whose IDNA 2003 form is not the one browsers send (UTS 46)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host:
        return None
    if not host.isascii():
        try:
            encoded = host.encode("idna")
            if encoded.decode("idna") != host:  # IDNA 2003 mapped a character (ß, ς) browsers keep
                return None
        except UnicodeError:
            return None
        host = encoded.decode("ascii")
    if ":" in host:
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"  # RFC 5952, as the URL Standard
        except ValueError:
            return None
    return f"{scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[scheme]) else f":{port}")


def is_origin(text: str) -> bool:
    """``text`` names an origin (``scheme://host[:port]``, at most a ``/`` after it), not a page."""
    parts = urlsplit(text.strip())
    bare = parts.path in ("", "/") and not (parts.query or parts.fragment or "@" in parts.netloc)
    return bare and origin_of(text) is not None


@dataclass(frozen=True)
class Rules:
    """What a granted origin may send and read on a group of paths (Fetch §3.2.3)."""

    methods: tuple[str, ...]
    #: Request headers a preflight may ask for, in lower case.
    headers: tuple[str, ...]
    #: Response headers the page may read beyond the CORS-safelisted ones.
    expose: tuple[str, ...] = ()
    #: Seconds a browser may keep a preflight's answer.
    max_age: int = 600


def is_preflight(scope: Scope, headers: Headers) -> bool:
    """A CORS preflight: ``OPTIONS`` with ``Access-Control-Request-Method`` (Fetch §3.2.2)."""
    return scope["method"] == "OPTIONS" and "access-control-request-method" in headers


def preflight(
    allowed: str | None, rules: Rules, request: Headers, *, vary: bool, extra: Mapping[str, str] | None = None
) -> Response:
    """Answer a preflight: 204 with what ``allowed`` may send (and ``extra``), or 403 without any
    grant when the origin, the method or a requested header is not allowed."""
    asked = {h.strip().lower() for h in request.get("access-control-request-headers", "").split(",")}
    asked.discard("")
    method = request["access-control-request-method"].strip().upper()
    vary_header = {"Vary": "Origin"} if vary else {}
    if allowed is None or method not in rules.methods or not asked <= set(rules.headers):
        refusal = "CORS preflight refused: origin, method or headers not allowed"
        return PlainTextResponse(refusal, status_code=403, headers=vary_header)
    return Response(
        status_code=204,
        headers={
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": ", ".join(rules.methods),
            "Access-Control-Allow-Headers": ", ".join(rules.headers),
            "Access-Control-Max-Age": str(rules.max_age),
            **(extra or {}),
            **vary_header,
        },
    )


def granting(
    send: Send, allowed: str | None, rules: Rules, *, vary: bool, extra: Mapping[str, str] | None = None
) -> Send:
    """``send``, adding to the response head the grant of ``allowed`` (if any), ``Vary: Origin``
    when ``vary`` and the ``extra`` headers."""

    async def send_granted(message: Message) -> None:
        if message["type"] == "http.response.start":
            out = MutableHeaders(scope=message)
            for name, value in (extra or {}).items():
                out[name] = value
            if allowed is not None:
                out["Access-Control-Allow-Origin"] = allowed
                if rules.expose:
                    out["Access-Control-Expose-Headers"] = ", ".join(rules.expose)
            if vary:
                out.add_vary_header("Origin")
        await send(message)

    return send_granted
