"""Fetching a client's JWK Set by URL, safely (SMART App Launch 2.2 "client-confidential-asymmetric").

A registered ``jwks_uri`` is attacker-controlled input, so every fetch is bounded (RFC 8725 §3.10,
RFC 7591 §5, OWASP API7 SSRF; security catalogue AS-11):

* ``https`` only; plain ``http`` only to a loopback address and only when ``allow_loopback_http``
  is set (tests, local development);
* the host is resolved first and *every* address must be public (loopback only with
  ``allow_loopback_http``); the connection then goes to the checked address, with the original
  ``Host`` and TLS server name, so DNS rebinding cannot swap in an internal address;
* redirects are never followed; the body is streamed and abandoned past ``max_bytes``; the whole
  fetch, DNS included, is bounded by ``timeout`` seconds;
* the document must be a JWK Set (RFC 7517 §5) of public keys, at most :data:`MAX_KEYS` of them.

The result is cached per URL as the response's ``Cache-Control`` allows (SMART: "SHALL NOT cache a
JWKS for longer than the client's cache-control header indicates"): ``max-age`` capped at
``max_ttl``, nothing cached on ``no-store``/``no-cache``, ``default_ttl`` when the header is silent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import httpx
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

__all__ = ["MAX_KEYS", "JwksError", "JwksFetcher", "Resolver", "key_set_from_jwks"]

#: Most keys accepted in one JWK Set; a client needs a handful at most (rotation).
MAX_KEYS: Final = 20
# Members that only a private or symmetric key has (RFC 7518 §6.2.2, §6.3.2, §6.4.1).
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

#: Resolves (host, port) to IP address strings; the default uses the event loop's getaddrinfo.
Resolver = Callable[[str, int], Awaitable[list[str]]]


class JwksError(Exception):
    """The JWK Set could not be fetched or is not acceptable. The message is safe to show a client."""


def key_set_from_jwks(document: object) -> KeySet:
    """Validate a JWK Set document (RFC 7517 §5) and import it.

    Accepts at most :data:`MAX_KEYS` public keys; a key with private or symmetric material makes
    the whole set unacceptable (the client has published a secret). Keys of an unknown ``kty`` are
    ignored (RFC 7517 §5), but at least one usable key must remain.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError("the JWKS must be a JSON object with a 'keys' array")
    keys: list[object] = document["keys"]
    if not keys or len(keys) > MAX_KEYS:
        raise JwksError(f"the JWKS must hold between 1 and {MAX_KEYS} keys")
    for key in keys:
        if not isinstance(key, dict) or not isinstance(key.get("kty"), str):
            raise JwksError("every JWKS entry must be a JSON object with a 'kty'")
        if _PRIVATE_MEMBERS & key.keys():
            raise JwksError("the JWKS contains private or symmetric key material")
    try:
        with warnings.catch_warnings():
            # joserfc warns about weak keys (e.g. RSA < 2048 bits, RFC 7518 §3.3); refuse them instead.
            warnings.simplefilter("error", SecurityWarning)
            return KeySet.import_key_set({"keys": keys})  # type: ignore[typeddict-item]  # checked above
    except SecurityWarning as exc:
        raise JwksError("the JWKS contains a key that is too weak") from exc
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise JwksError("the JWKS contains an invalid key") from exc


@dataclass(frozen=True)
class _Cached:
    keys: KeySet
    expires_at: float


class JwksFetcher:
    """Fetches and caches client JWK Sets by URL, with the SSRF and resource bounds above."""

    def __init__(
        self,
        *,
        allow_loopback_http: bool = False,
        max_bytes: int = 64 * 1024,
        timeout: float = 3.0,
        default_ttl: float = 300.0,
        max_ttl: float = 3600.0,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._allow_loopback = allow_loopback_http
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._default_ttl = min(default_ttl, max_ttl)
        self._max_ttl = max_ttl
        self._resolve = resolver or _getaddrinfo
        self._clock = clock
        self._cache: dict[str, _Cached] = {}

    async def get(self, url: str) -> KeySet:
        """The JWK Set at ``url``, from the cache while it is fresh. Raises :class:`JwksError`."""
        cached = self._cache.get(url)
        if cached is not None and cached.expires_at > self._clock():
            return cached.keys
        self._cache.pop(url, None)
        try:
            async with asyncio.timeout(self._timeout):
                keys, ttl = await self._fetch(url)
        except TimeoutError as exc:
            raise JwksError("fetching the JWKS timed out") from exc
        except httpx.HTTPError as exc:
            raise JwksError(f"fetching the JWKS failed ({type(exc).__name__})") from exc
        if ttl > 0:
            self._cache[url] = _Cached(keys, self._clock() + ttl)
        return keys

    def invalidate(self, url: str) -> None:
        """Forget the cached JWK Set of ``url`` (e.g. after the client's registration changed)."""
        self._cache.pop(url, None)

    async def _fetch(self, url: str) -> tuple[KeySet, float]:
        try:
            target = httpx.URL(url)
            host, netloc, userinfo = target.host, target.netloc.decode("ascii"), target.userinfo
        except (httpx.InvalidURL, ValueError) as exc:
            raise JwksError("the JWKS URL is not a valid URL") from exc
        if userinfo:
            raise JwksError("the JWKS URL must not carry credentials")
        if target.scheme not in ("https", "http") or not host:
            raise JwksError("the JWKS URL must be an absolute https URL")
        port = target.port or (443 if target.scheme == "https" else 80)
        address = await self._checked_address(host, port, plain_http=target.scheme == "http")
        # Connect to the address we checked; keep the name for Host and TLS (SNI + certificate check).
        pinned = target.copy_with(host=address)
        headers = {"Host": netloc, "Accept": "application/jwk-set+json, application/json"}
        async with (
            httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=self._timeout) as client,
            client.stream("GET", pinned, headers=headers, extensions={"sni_hostname": host}) as response,
        ):
            if response.status_code != httpx.codes.OK:
                raise JwksError(f"the JWKS URL answered HTTP {response.status_code}")
            body = await self._read_capped(response)
            ttl = self._ttl(response.headers.get("cache-control"))
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise JwksError("the JWKS is not valid JSON") from exc
        return key_set_from_jwks(document), ttl

    async def _checked_address(self, host: str, port: int, *, plain_http: bool) -> str:
        """Resolve ``host`` and return an address to connect to, if every address is allowed."""
        try:
            addresses = [ipaddress.ip_address(a) for a in await self._resolve(host, port)]
        except (OSError, ValueError) as exc:
            raise JwksError("the JWKS host could not be resolved") from exc
        if not addresses:
            raise JwksError("the JWKS host could not be resolved")
        for ip in addresses:
            loopback = self._allow_loopback and _unmapped(ip).is_loopback
            if plain_http and not loopback:
                raise JwksError("the JWKS URL must use https")
            if not loopback and not _is_public(ip):
                raise JwksError("the JWKS host resolves to a non-public address")
        return str(addresses[0])

    async def _read_capped(self, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self._max_bytes):
            raise JwksError(f"the JWKS is larger than {self._max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_bytes:
                raise JwksError(f"the JWKS is larger than {self._max_bytes} bytes")
        return bytes(body)

    def _ttl(self, cache_control: str | None) -> float:
        """Seconds the response may be cached (RFC 9111 §5.2.2; capped at ``max_ttl``)."""
        if cache_control is None:
            return self._default_ttl
        directives = {}
        for part in cache_control.split(","):
            name, _, value = part.strip().partition("=")
            directives[name.strip().lower()] = value.strip().strip('"')
        if "no-store" in directives or "no-cache" in directives:
            return 0.0
        if "max-age" not in directives:
            return self._default_ttl
        max_age = directives["max-age"]
        # An unreadable max-age is treated as 0: never cache longer than the client allowed.
        return float(min(int(max_age), self._max_ttl)) if max_age.isdigit() else 0.0


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast: no loopback, private, link-local (169.254/16), CGNAT or reserved."""
    ip = _unmapped(ip)
    return ip.is_global and not ip.is_multicast


async def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]
