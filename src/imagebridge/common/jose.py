"""JSON Web Keys and signed JWTs (RFC 7515, RFC 7517, RFC 7518) for both services.

Algorithms are always pinned by the caller (RFC 8725 §3.1): SMART asymmetric client
authentication uses RS384 or ES384; ID tokens are RS256 (OIDC Core §3.1.3.7).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

Algorithm = Literal["RS256", "RS384", "ES384"]

#: Algorithms a SMART client may use to authenticate (SMART App Launch 2.2, client-confidential-asymmetric).
CLIENT_ASSERTION_ALGORITHMS: tuple[Algorithm, ...] = ("RS384", "ES384")


def generate_private_jwk(alg: Algorithm = "ES384") -> dict[str, Any]:
    """A new private JWK with ``kid`` (RFC 7638 thumbprint), ``alg`` and ``use: sig``."""
    key = ECKey.generate_key("P-384") if alg == "ES384" else RSAKey.generate_key(2048)
    data: dict[str, Any] = dict(key.as_dict(private=True))
    data.update(kid=key.thumbprint(), alg=alg, use="sig")
    return data


def public_jwk(private: dict[str, Any]) -> dict[str, Any]:
    """The public half of a private JWK, keeping ``kid``, ``alg`` and ``use``."""
    key = _import(private)
    data: dict[str, Any] = dict(key.as_dict(private=False))
    for member in ("kid", "alg", "use"):
        if member in private:
            data[member] = private[member]
    return data


def public_jwks(*privates: dict[str, Any]) -> dict[str, Any]:
    """A JWK Set (RFC 7517 §5) of the public halves."""
    return {"keys": [public_jwk(p) for p in privates]}


def _import(jwk: dict[str, Any]) -> ECKey | RSAKey:
    if jwk.get("kty") == "EC":
        return ECKey.import_key(jwk)
    if jwk.get("kty") == "RSA":
        return RSAKey.import_key(jwk)
    raise ValueError(f"unsupported key type {jwk.get('kty')!r}")


def sign(claims: dict[str, Any], private: dict[str, Any], *, typ: str = "JWT") -> str:
    """A compact JWS of ``claims`` signed with ``private`` under its declared ``alg``."""
    alg = str(private["alg"])
    header = {"alg": alg, "kid": private["kid"], "typ": typ}
    return jwt.encode(header, claims, _import(private), algorithms=[alg])


def client_assertion(
    client_id: str, token_endpoint: str, private: dict[str, Any], lifetime: int = 240
) -> str:
    """A Backend Services authentication JWT (SMART 2.2 §Backend Services; RFC 7523 §3)."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "exp": now + lifetime,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return sign(claims, private)


def load_or_create_private_jwk(path: Path, alg: Algorithm = "ES384") -> dict[str, Any]:
    """Read a private JWK from ``path``, creating it (mode 0600) on first use."""
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    jwk = generate_private_jwk(alg)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(jwk))
    tmp.chmod(0o600)
    tmp.replace(path)
    return jwk


def key_set(jwks: dict[str, Any]) -> KeySet:
    """Import a JWK Set."""
    return KeySet.import_key_set(jwks)  # type: ignore[arg-type]
