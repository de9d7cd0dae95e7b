"""Capability URLs for ``requires-access-token = false`` Endpoints (Argonaut SMART Imaging Access,
IG rev. 3d82157b+, "Endpoint extension requires-access-token"; spec.md §1.7).

A capability is the AES-256-GCM encryption (NIST SP 800-38D) of ``{study, token, client_id,
exp}`` under a key only this imaging system holds (``capability.key`` in its data folder). It is
unguessable and tamper-evident; it carries the SMART token it was issued under, so every request
re-checks that token through the normal, cached introspection: a revoked token stops the URL
within the revocation window. It names one study and expires no later than the token. The token
never appears in clear text in the URL, the logs or any store.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: Bound into every capability as associated data: a capability is not valid for anything else.
PURPOSE = b"imagebridge-capability-v1"
KEY_FILE = "capability.key"


class InvalidCapability(ValueError):
    """Tampered, foreign, or not a capability at all (answered 403)."""


@dataclass(frozen=True)
class Capability:
    study_uid: str
    token: str
    client_id: str
    exp: float


def load_or_create_key(data_dir: Path) -> bytes:
    """The 256-bit key in ``data_dir/capability.key``, created (mode 0600) on first use."""
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # first writer wins when several workers start at once
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    key = path.read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} does not hold a 256-bit key")
    return key


class Capabilities:
    """Seal and open capabilities with one key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, capability: Capability) -> str:
        payload = orjson.dumps(
            {"s": capability.study_uid, "t": capability.token, "c": capability.client_id, "e": capability.exp}
        )
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, PURPOSE)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, value: str) -> Capability:
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            if len(raw) < 12 + 16:
                raise InvalidCapability("too short")
            data = orjson.loads(self._aead.decrypt(raw[:12], raw[12:], PURPOSE))
            return Capability(str(data["s"]), str(data["t"]), str(data["c"]), float(data["e"]))
        except (InvalidTag, binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise InvalidCapability("not a valid capability") from exc
