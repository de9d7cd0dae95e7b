"""Verifying a ``client_assertion`` JWT: RFC 7523 §3 (JWT client authentication, ``private_key_jwt``)
as profiled by SMART App Launch 2.2 "client-confidential-asymmetric" (Backend Services, §2.4 of the
spec digest).

Nothing in the token is trusted before the checks that concern it:

* the header is decoded here, not by the JOSE library: ``alg`` must be RS384 or ES384 and that one
  algorithm is pinned for verification (RFC 8725 §2.1, §3.1); ``crit`` (RFC 7515 §4.1.11), ``jwk``,
  ``x5u`` and ``x5c`` are refused (RFC 8725 §3.10); ``typ``, if present, must be ``JWT`` (§3.11);
* ``jku`` is accepted only if it equals the client's registered ``jwks_uri``; no other URL is fetched;
* exactly one key of the client's JWK Set has the header's ``kid`` and a ``kty`` suited to ``alg``;
* ``iss`` = ``sub`` = the registered ``client_id`` (= the form's ``client_id`` when sent), ``aud`` is
  the token endpoint, ``exp`` is at most five minutes ahead, ``jti`` has not been seen for this ``iss``;
* duplicate member names in the header or claims make the token invalid (RFC 7515 §4, RFC 7519 §4).

Every failure raises :class:`InvalidClient`, answered as 401 ``invalid_client`` (RFC 6749 §5.2).
"""

from __future__ import annotations

import base64
import binascii
import functools
import heapq
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, KeySet, RSAKey

from imagebridge.ehr.smart.jwks_fetch import JwksError, key_set_from_jwks

__all__ = [
    "ALGORITHMS",
    "MAX_LIFETIME",
    "REPLAYED",
    "DeferredUse",
    "InvalidClient",
    "MemoryReplayStore",
    "RegisteredClient",
    "ReplayStore",
    "VerifiedClient",
    "verify_client_assertion",
]

#: Signature algorithms SMART requires servers to support for client assertions, and nothing else.
ALGORITHMS: Final = ("RS384", "ES384")
#: SMART: ``exp`` "SHALL be no more than five minutes in the future".
MAX_LIFETIME: Final = 300
#: The refusal of an assertion whose ``jti`` was used before.
REPLAYED: Final = "client assertion jti has already been used"
_MAX_ASSERTION_LENGTH: Final = 16 * 1024
_MAX_JTI_LENGTH: Final = 255
_MIN_RSA_BITS: Final = 2048  # RFC 7518 §3.3
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_FORBIDDEN_HEADERS: Final = ("crit", "jwk", "x5u", "x5c")


class InvalidClient(Exception):
    """Client authentication failed: answer 401 ``invalid_client`` with :attr:`error_description`.

    The description never contains the assertion itself.
    """

    error: Final = "invalid_client"

    def __init__(self, error_description: str) -> None:
        super().__init__(error_description)
        self.error_description = error_description


class RegisteredClient(Protocol):
    """What the verifier needs to know about a registered confidential-asymmetric client."""

    @property
    def client_id(self) -> str: ...
    @property
    def jwks(self) -> dict[str, Any] | None: ...
    @property
    def jwks_uri(self) -> str | None: ...
    @property
    def enabled(self) -> bool: ...


class ReplayStore(Protocol):
    """Remembers ``jti`` values until the assertions carrying them have expired (SMART, RFC 7523 §3 #7)."""

    async def first_use(self, key: str, expires_at: float) -> bool:
        """Atomically record ``key`` until ``expires_at`` (epoch seconds); False if already recorded."""
        ...


class MemoryReplayStore:
    """A :class:`ReplayStore` for one process: a dict plus an expiry heap, pruned on every call.

    ``first_use`` never awaits, so it is atomic within one event loop.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []

    async def first_use(self, key: str, expires_at: float) -> bool:
        """Record ``key`` until ``expires_at``; False if it is already recorded and unexpired."""
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, old = heapq.heappop(self._expiry)
            if self._seen.get(old, math.inf) <= now:
                del self._seen[old]
        if self._seen.get(key, -math.inf) > now:
            return False
        self._seen[key] = expires_at
        heapq.heappush(self._expiry, (expires_at, key))
        return True

    def __len__(self) -> int:
        return len(self._seen)


class DeferredUse:
    """A :class:`ReplayStore` that only notes the key of a verified assertion: its caller records it
    in the transaction that acts on the authentication (one commit where there would be two), and
    must record it even when the request then fails, so that every assertion is spent once."""

    key: str | None = None
    expires_at: float = 0.0

    async def first_use(self, key: str, expires_at: float) -> bool:
        self.key, self.expires_at = key, expires_at
        return True


@dataclass(frozen=True)
class VerifiedClient:
    """The outcome of a successful verification."""

    client_id: str
    key_id: str
    algorithm: str
    jti: str
    expires_at: float


async def verify_client_assertion(
    assertion: str,
    *,
    form_client_id: str | None,
    token_endpoint: str,
    resolve_client: Callable[[str], Awaitable[RegisteredClient | None]],
    fetch_jwks: Callable[[str], Awaitable[KeySet]],
    replay: ReplayStore,
    now: float | None = None,
    leeway: int = 60,
) -> VerifiedClient:
    """Authenticate a client by its ``client_assertion`` (RFC 7523 §3; SMART client-confidential-asymmetric).

    ``fetch_jwks`` is only ever called with the client's registered ``jwks_uri``. ``leeway`` (seconds)
    absorbs clock skew on ``exp``, ``nbf`` and ``iat``. Raises :class:`InvalidClient`.
    """
    current = time.time() if now is None else now
    header, claims = _decode_unverified(assertion)
    alg = _check_header(header)
    client_id = _check_subject(claims, form_client_id)
    expires_at = _check_claims(claims, token_endpoint, current, leeway)

    client = await resolve_client(client_id)
    if client is None or not client.enabled:
        raise InvalidClient("unknown or disabled client")
    keys = await _client_keys(client, header.get("jku"), fetch_jwks)
    kid = header["kid"]
    key = _select_key(keys, kid, alg)
    try:
        jws.deserialize_compact(assertion, key, algorithms=[alg])
    except (JoseError, ValueError) as exc:
        raise InvalidClient("client assertion signature is invalid") from exc

    jti: str = claims["jti"]
    # Scoped to the issuer (length-prefixed: unambiguous), kept while the assertion could be accepted.
    if not await replay.first_use(f"{len(client_id)}:{client_id}:{jti}", expires_at + leeway):
        raise InvalidClient(REPLAYED)
    return VerifiedClient(client_id, kid, alg, jti, expires_at)


def claimed_issuer(assertion: str) -> str | None:
    """The ``iss`` an assertion claims, unverified: only to name who was refused in the audit trail."""
    try:
        iss = _decode_unverified(assertion)[1].get("iss")
    except InvalidClient:
        return None
    return iss[:200] if isinstance(iss, str) and iss else None


def _decode_unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a JWS Compact Serialization (RFC 7515 §7.1) and decode header and claims strictly."""
    if len(assertion) > _MAX_ASSERTION_LENGTH:
        raise InvalidClient("client assertion is too large")
    segments = assertion.split(".")
    if len(segments) != 3 or not all(_B64URL.fullmatch(s) for s in segments) or not segments[2]:
        raise InvalidClient("client assertion is not a signed JWT in compact serialization")
    return _json_object(segments[0], "header"), _json_object(segments[1], "claims")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidClient(f"client assertion {what} is not valid JSON without duplicate members") from exc
    if not isinstance(value, dict):
        raise InvalidClient(f"client assertion {what} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member name")
    return result


def _check_header(header: dict[str, Any]) -> str:
    """The pinned algorithm, after checking the JOSE header (RFC 7515 §4.1; RFC 8725 §3.1, §3.11)."""
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise InvalidClient(f"client assertion alg must be one of {', '.join(ALGORITHMS)}")
    for name in _FORBIDDEN_HEADERS:
        if name in header:
            raise InvalidClient(f"client assertion header '{name}' is not accepted")
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.lower().removeprefix("application/") != "jwt"):
        raise InvalidClient("client assertion typ must be JWT")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidClient("client assertion header must carry a kid")
    jku = header.get("jku")
    if jku is not None and not isinstance(jku, str):
        raise InvalidClient("client assertion jku is not a string")
    return str(alg)


def _check_subject(claims: dict[str, Any], form_client_id: str | None) -> str:
    """RFC 7523 §3 items 1–2 and SMART: ``iss`` = ``sub`` = ``client_id``."""
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or not iss:
        raise InvalidClient("client assertion iss is missing")
    if sub != iss:
        raise InvalidClient("client assertion sub must equal iss")
    if form_client_id is not None and form_client_id != iss:
        raise InvalidClient("client_id does not match the client assertion iss")
    return iss


def _check_claims(claims: dict[str, Any], token_endpoint: str, now: float, leeway: int) -> float:
    """RFC 7523 §3 items 3–7 with SMART's five-minute limit; returns ``exp``."""
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if token_endpoint not in audiences:
        raise InvalidClient("client assertion aud must be the token endpoint")
    exp = _numeric_date(claims, "exp")
    if exp is None:
        raise InvalidClient("client assertion exp is missing")
    if exp <= now - leeway:
        raise InvalidClient("client assertion has expired")
    if exp > now + MAX_LIFETIME + leeway:
        raise InvalidClient("client assertion exp is more than five minutes in the future")
    for name in ("nbf", "iat"):
        value = _numeric_date(claims, name)
        if value is not None and value > now + leeway:
            raise InvalidClient(f"client assertion {name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_LENGTH:
        raise InvalidClient(f"client assertion jti must be a string of 1 to {_MAX_JTI_LENGTH} characters")
    return exp


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2), or None when absent."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidClient(f"client assertion {name} is not a NumericDate")
    return float(value)


async def _client_keys(
    client: RegisteredClient, jku: str | None, fetch_jwks: Callable[[str], Awaitable[KeySet]]
) -> KeySet:
    """The client's JWK Set: fetched from its registered ``jwks_uri`` (also when ``jku`` names that
    same URL) or else its inline registration. A ``jku`` naming anything else is refused unfetched."""
    if jku is not None and jku != client.jwks_uri:
        raise InvalidClient("client assertion jku is not the client's registered JWKS URL")
    try:
        if client.jwks_uri is not None and (jku is not None or client.jwks is None):
            return await fetch_jwks(client.jwks_uri)
        if client.jwks is not None:
            return _inline_keys(orjson.dumps(client.jwks, option=orjson.OPT_SORT_KEYS))
    except JwksError as exc:
        raise InvalidClient(f"the client's JWKS is unusable: {exc}") from exc
    raise InvalidClient("the client has no registered keys")


@functools.lru_cache(maxsize=256)
def _inline_keys(jwks: bytes) -> KeySet:
    """A registered inline JWK Set, imported once per distinct document (not on every assertion)."""
    return key_set_from_jwks(orjson.loads(jwks))


def _select_key(keys: KeySet, kid: str, alg: str) -> Key:
    """Exactly one key with ``kid`` whose type fits ``alg`` (SMART signature-verification steps)."""
    matching = [k for k in keys if k.kid == kid and _fits(k, alg)]
    if len(matching) != 1:
        raise InvalidClient(
            "no key of the client matches the assertion kid and alg"
            if not matching
            else "several keys of the client match the assertion kid"
        )
    return matching[0]


def _fits(key: Key, alg: str) -> bool:
    """Key type, curve, size, ``use``, ``key_ops`` and ``alg`` of the JWK allow verifying with ``alg``."""
    if key.get("use") not in (None, "sig") or key.get("alg") not in (None, alg):
        return False
    key_ops = key.get("key_ops")
    if key_ops is not None and "verify" not in key_ops:
        return False
    if alg == "RS384":
        return isinstance(key, RSAKey) and key.get_op_key("verify").key_size >= _MIN_RSA_BITS
    return isinstance(key, ECKey) and key.curve_name == "P-384"
