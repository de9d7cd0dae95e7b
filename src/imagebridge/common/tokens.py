"""Opaque secrets (tokens, codes, handles) and the ids that stand for them in logs and audit.

RFC 6749 §10.10 and RFC 6819 §5.1.4.2.2: credentials must be unguessable; every secret here has
256 bits from the OS CSPRNG. Only a SHA-256 digest is ever stored; logs carry ``token_id``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_secret() -> str:
    """A fresh 256-bit URL-safe secret."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """The SHA-256 hex digest under which a secret is stored and cached."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def token_id(secret: str) -> str:
    """A short, non-reversible id for a secret, safe for logs and audit records."""
    return digest(secret)[:16]


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
