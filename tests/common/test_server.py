"""The HTTPS context the services serve with (common/server.py; security.md RS-11)."""

from __future__ import annotations

import ssl
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives import serialization
from tests.security.tls_pair import make_certificates

from imagebridge.common.server import _tls_factory


async def _app(scope: object, receive: object, send: object) -> None:
    """Never called: the configuration is only loaded."""


def test_the_context_is_uvicorns_own_with_tls_1_2_at_least(tmp_path: Path) -> None:
    """Everything uvicorn applied from its settings stays: the certificate with a password-protected
    key, client certificates required and their CA, the cipher list."""
    certs = make_certificates(tmp_path)
    key = serialization.load_pem_private_key(certs.server.keyfile.read_bytes(), None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"key-password"),
        )
    )
    config = uvicorn.Config(
        _app,
        ssl_certfile=str(certs.server.certfile),
        ssl_keyfile=str(locked),
        ssl_keyfile_password="key-password",
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        ssl_ca_certs=str(certs.ca_file),
        ssl_ciphers="ECDHE-ECDSA-AES256-GCM-SHA384",
        ssl_context_factory=_tls_factory,
    )
    config.load()
    context = config.ssl
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] == 1
    tls12 = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES256-GCM-SHA384"]
