"""Both services over HTTPS, with certificates made here (security.md RS-11, RS-12).

A private CA signs the certificate each service presents for 127.0.0.1; the imaging system trusts
that CA through ``ehr_ca_file``. :func:`start_tls_pair` can instead give the EHR a certificate the
imaging system must not accept: self-signed, or signed by the CA for another host name.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagebridge.apps.stack import IMAGING_CLIENT_SCOPE, LocalStack, start_service
from imagebridge.common import db, jose
from imagebridge.ehr.smart.grants import Grant, GrantStore

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: Key, issuer: tuple[str, Key] | None, san: x509.GeneralName | None
) -> x509.Certificate:
    """``subject``'s certificate, signed by ``issuer`` (name, key), or self-signed as a CA."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer[0] if issuer else subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=san is None, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass(frozen=True)
class Pem:
    certfile: Path
    keyfile: Path


def _write(folder: Path, name: str, cert: x509.Certificate, key: Key) -> Pem:
    certfile, keyfile = folder / f"{name}.crt", folder / f"{name}.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return Pem(certfile, keyfile)


@dataclass(frozen=True)
class Certificates:
    """The private CA, a CA-signed 127.0.0.1 server certificate, and two the imaging system refuses."""

    ca_file: Path
    server: Pem
    self_signed: Pem
    wrong_host: Pem

    def client_context(self) -> ssl.SSLContext:
        """A client that trusts the private CA."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("imagebridge test CA", ca_key, None, None)
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    _write(folder, "ca", ca, ca_key)
    return Certificates(
        ca_file=folder / "ca.crt",
        server=_write(
            folder,
            "server",
            _certificate("127.0.0.1", keys[0], ("imagebridge test CA", ca_key), loopback),
            keys[0],
        ),
        self_signed=_write(
            folder,
            "self-signed",
            _certificate("127.0.0.1", keys[1], ("127.0.0.1", keys[1]), loopback),
            keys[1],
        ),
        wrong_host=_write(
            folder,
            "wrong-host",
            _certificate(
                "elsewhere.example",
                keys[2],
                ("imagebridge test CA", ca_key),
                x509.DNSName("elsewhere.example"),
            ),
            keys[2],
        ),
    )


def handshake(port: int, version: ssl.TLSVersion, ca_file: Path) -> str:
    """The TLS version negotiated with 127.0.0.1:``port`` by a client trusting ``ca_file`` and
    offering at most ``version`` (and at least TLS 1.0)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client itself would offer TLS 1.0/1.1
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: the point of the test
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


@dataclass
class TlsPair:
    stack: LocalStack
    certs: Certificates

    @property
    def ehr_origin(self) -> str:
        return f"https://127.0.0.1:{self.stack.ehr_port}"

    @property
    def imaging_origin(self) -> str:
        return f"https://127.0.0.1:{self.stack.imaging_port}"

    def patient_token(self, patient: str) -> str:
        """A patient-context imaging token, issued in the EHR's grant store."""

        async def issue() -> str:
            engine = db.create_engine(self.stack.ehr_settings.resolved_database_url, pool_size=1)
            try:
                now = time.time()
                grant = Grant(
                    client_id="demo-app",
                    scope="launch/patient patient/ImagingStudy.rs",
                    expires_at=now + 300,
                    issued_at=now,
                    kind="access",
                    patient=patient,
                    fhir_user=f"Patient/{patient}",
                )
                return await GrantStore(engine).issue(grant)
            finally:
                await engine.dispose()

        return asyncio.run(issue())

    def stop(self) -> None:
        self.stack.stop()


def _register_clients(stack: LocalStack, scope: str) -> None:
    """Register the patient app ``demo-app`` at the EHR and, with ``scope``, the imaging system's
    backend client (else :meth:`LocalStack.provision` does)."""
    from imagebridge.ehr.admin import Admin
    from imagebridge.ehr.app import migrate

    migrate(stack.ehr_settings)
    key = jose.load_or_create_private_jwk(stack.imaging_settings.private_key_file)

    async def register() -> None:
        admin = Admin(stack.ehr_settings)
        try:
            if scope:
                await admin.add_client("imaging", "backend", scope=scope, jwks=jose.public_jwks(key))
            await admin.add_client(
                "demo-app",
                "public",
                scope="launch/patient patient/*.rs",
                redirect_uris=["https://app.example/cb"],
            )
        finally:
            await admin.close()

    asyncio.run(register())


def start_tls_pair(
    data_dir: Path,
    certs: Certificates,
    ehr_pem: Pem | None = None,
    *,
    imaging_env: dict[str, str] | None = None,
    imaging_scope: str = IMAGING_CLIENT_SCOPE,
) -> TlsPair:
    """Provision and start both services over HTTPS; the EHR presents ``ehr_pem`` (default: the
    CA-signed 127.0.0.1 certificate), the imaging system trusts the private CA and is registered
    at the EHR with ``imaging_scope``; ``imaging_env`` are further imaging settings."""
    stack = LocalStack(data_dir)
    pair = TlsPair(stack, certs)
    ehr_pem = ehr_pem or certs.server
    stack.extra_ehr_env = {
        "IMAGEBRIDGE_EHR_TLS_CERTFILE": str(ehr_pem.certfile),
        "IMAGEBRIDGE_EHR_TLS_KEYFILE": str(ehr_pem.keyfile),
        "IMAGEBRIDGE_EHR_PUBLIC_URL": pair.ehr_origin,
        "IMAGEBRIDGE_EHR_IMAGING_BASES": f"{pair.imaging_origin}/dicom-web",
    }
    stack.extra_imaging_env = {
        "IMAGEBRIDGE_IMAGING_TLS_CERTFILE": str(certs.server.certfile),
        "IMAGEBRIDGE_IMAGING_TLS_KEYFILE": str(certs.server.keyfile),
        "IMAGEBRIDGE_IMAGING_PUBLIC_URL": pair.imaging_origin,
        "IMAGEBRIDGE_IMAGING_EHR_FHIR_BASE": f"{pair.ehr_origin}/fhir",
        "IMAGEBRIDGE_IMAGING_EHR_CA_FILE": str(certs.ca_file),
        "IMAGEBRIDGE_IMAGING_EHR_TIMEOUT": "5",
        **(imaging_env or {}),
    }
    _register_clients(stack, "" if imaging_scope == IMAGING_CLIENT_SCOPE else imaging_scope)
    stack.provision()
    trusting = ssl.create_default_context(
        cafile=str(ehr_pem.certfile if ehr_pem is certs.self_signed else certs.ca_file)
    )
    trusting.check_hostname = ehr_pem is not certs.wrong_host
    if not trusting.check_hostname:
        trusting.verify_mode = ssl.CERT_NONE
    stack.ehr = start_service("ehr", stack.ehr_env(), pair.ehr_origin, data_dir / "ehr.log", verify=trusting)
    try:
        stack.imaging = start_service(
            "imaging",
            stack.imaging_env(),
            pair.imaging_origin,
            data_dir / "imaging.log",
            verify=certs.client_context(),
        )
    except BaseException:
        stack.stop()
        raise
    return pair
