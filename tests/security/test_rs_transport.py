"""Transport and the imaging system's own credential (security.md §2: RS-11, RS-12), against the
running pair served over HTTPS with certificates made by the test (tests/security/tls_pair.py)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.security.tls_pair import Certificates, TlsPair, handshake, make_certificates, start_tls_pair

from imagebridge.apps.stack import IMAGING_CLIENT_SCOPE, LocalStack, free_port, start_service
from imagebridge.ehr.admin import Admin


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, certs: Certificates) -> Iterator[TlsPair]:
    running = start_tls_pair(tmp_path_factory.mktemp("tls-pair"), certs)
    try:
        yield running
    finally:
        running.stop()


def _tls_1_2_and_newer_only(port: int, ca_file: Path) -> None:
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises(ssl.SSLError) as refused:
            handshake(port, old, ca_file)
        assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)  # refused by the server
    assert handshake(port, ssl.TLSVersion.TLSv1_2, ca_file) == "TLSv1.2"
    assert handshake(port, ssl.TLSVersion.MAXIMUM_SUPPORTED, ca_file) == "TLSv1.3"


@pytest.mark.parametrize("service", ["ehr", "imaging"])
def test_rs11_tls_below_1_2_is_refused(pair: TlsPair, service: str) -> None:
    _tls_1_2_and_newer_only(
        pair.stack.ehr_port if service == "ehr" else pair.stack.imaging_port, pair.certs.ca_file
    )


def test_rs11_au04_two_workers_serve_tls_and_redact_their_access_logs(pair: TlsPair, tmp_path: Path) -> None:
    """``imaging serve --workers 2``: uvicorn pickles its configuration into each worker process,
    the TLS context hook and the redacting access-log configuration included; both must work there.
    The workers share the pair's public URL (the tokens' audience) on a port of their own."""
    port, canary = free_port(), "CANARY-W2-5T8K"
    service = start_service(
        "imaging",
        {
            **pair.stack.imaging_env(),
            "IMAGEBRIDGE_IMAGING_PORT": str(port),
            "IMAGEBRIDGE_IMAGING_DATA_DIR": str(tmp_path / "imaging"),
        },
        f"https://127.0.0.1:{port}",
        tmp_path / "workers.log",
        "--workers",
        "2",
        verify=pair.certs.client_context(),
    )
    try:
        for _ in range(600):  # /healthz answered as soon as one worker was up
            if service.log().count("Application startup complete") == 2:
                break
            time.sleep(0.1)
        _tls_1_2_and_newer_only(port, pair.certs.ca_file)
        token = pair.patient_token("alice")
        answers = []
        for _ in range(4):  # a connection each: the workers take turns accepting
            with httpx.Client(timeout=30, verify=pair.certs.client_context()) as http:
                answers.append(
                    http.get(
                        f"https://127.0.0.1:{port}/dicom-web/studies",
                        params={"PatientID": canary, "limit": "5"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                )
    finally:
        service.stop()
    log = service.log()
    assert log.count("Application startup complete") == 2, log[-2000:]
    for answer in answers:
        assert answer.status_code in (200, 204)
        line = f'"GET /dicom-web/studies?PatientID=[redacted]&limit=[redacted] HTTP/1.1" {answer.status_code}'
        assert line in log, log[-2000:]
    assert canary not in log


def test_rs11_token_fhir_and_dicomweb_answer_over_tls(pair: TlsPair) -> None:
    token = pair.patient_token("alice")
    with httpx.Client(timeout=30, verify=pair.certs.client_context()) as http:
        config = http.get(f"{pair.ehr_origin}/fhir/.well-known/smart-configuration").json()
        studies = http.get(
            f"{pair.imaging_origin}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
        )
    assert config["token_endpoint"].startswith("https://")
    assert config["introspection_endpoint"].startswith("https://")
    # the imaging system introspected the token at the EHR over verified TLS
    assert studies.status_code in (200, 204)


def test_rs11_unregistered_origin_gets_no_cors_grant(tmp_path: Path, certs: Certificates) -> None:
    """Over TLS: the imaging system grants only its configured viewer origin, the EHR's token
    endpoint and FHIR API only the origins of registered apps (the pair's app redirects to
    ``https://app.example/cb``); ``https://evil.example``, look-alikes and ``null`` get no
    ``Access-Control-Allow-Origin`` on either, preflight or actual request. The public discovery
    documents are readable from any origin (SMART App Launch), never with credentials."""
    running = start_tls_pair(
        tmp_path, certs, imaging_env={"IMAGEBRIDGE_IMAGING_CORS_ALLOWED_ORIGINS": "https://viewer.example"}
    )

    def preflight(page: str, method: str = "GET") -> dict[str, str]:
        return {
            "Origin": page,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        }

    def calls(http: httpx.Client, page: str, token: str) -> list[httpx.Response]:
        bearer = {"Origin": page, "Authorization": f"Bearer {token}"}
        return [
            http.get(f"{running.imaging_origin}/dicom-web/studies", headers=bearer),
            http.options(f"{running.imaging_origin}/dicom-web/studies", headers=preflight(page)),
            http.get(f"{running.ehr_origin}/fhir/Patient/alice", headers=bearer),
            http.options(f"{running.ehr_origin}/fhir/Patient", headers=preflight(page)),
            http.post(f"{running.ehr_origin}/auth/token", data={"grant_type": "x"}, headers={"Origin": page}),
            http.options(f"{running.ehr_origin}/auth/token", headers=preflight(page, "POST")),
        ]

    strangers = ("https://evil.example", "https://app.example.evil.com", "http://app.example", "null")
    try:
        token = running.patient_token("alice")
        with httpx.Client(timeout=30, verify=certs.client_context()) as http:
            refused = [answer for page in strangers for answer in calls(http, page, token)]
            public = http.get(f"{running.ehr_origin}/fhir/metadata", headers={"Origin": strangers[0]})
            viewer = calls(http, "https://viewer.example", token)[:2]
            app = calls(http, "https://app.example", token)[2:]
    finally:
        running.stop()
    for answer in refused:
        assert "access-control-allow-origin" not in answer.headers, answer.request.url
        assert "access-control-allow-credentials" not in answer.headers
    assert public.headers["access-control-allow-origin"] == "*"
    for answer in (public, *viewer, *app):
        assert "access-control-allow-credentials" not in answer.headers
    # controls: the configured viewer at the imaging system, the registered app at the EHR
    assert [a.headers.get("access-control-allow-origin") for a in viewer] == ["https://viewer.example"] * 2
    assert [a.headers.get("access-control-allow-origin") for a in app] == ["https://app.example"] * 4


def _studies(pair: TlsPair) -> httpx.Response:
    token = pair.patient_token("alice")
    with httpx.Client(timeout=30, verify=pair.certs.client_context()) as http:
        return http.get(
            f"{pair.imaging_origin}/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.mark.parametrize("ehr_certificate", ["self_signed", "wrong_host"])
def test_rs12_ehr_certificate_not_trusted_is_503(
    tmp_path: Path, certs: Certificates, ehr_certificate: str
) -> None:
    running = start_tls_pair(tmp_path, certs, getattr(certs, ehr_certificate))
    try:
        answers = [_studies(running) for _ in range(2)]
    finally:
        running.stop()
    for answer in answers:
        assert answer.status_code == 503
        assert b"DICM" not in answer.content
        assert answer.content[:1] != b"["


def _disable_imaging_client(pair: TlsPair) -> None:
    async def run() -> None:
        admin = Admin(pair.stack.ehr_settings)
        try:
            assert await admin.clients.set_enabled("imaging", False)
        finally:
            await admin.close()

    asyncio.run(run())


def test_rs12_imaging_client_disabled_at_the_ehr_is_503(tmp_path: Path, certs: Certificates) -> None:
    running = start_tls_pair(tmp_path, certs)
    try:
        assert _studies(running).status_code in (200, 204)  # its own token obtained and cached
        _disable_imaging_client(running)
        answers = [_studies(running) for _ in range(2)]  # fresh patient tokens: nothing cached
    finally:
        running.stop()
    assert [a.status_code for a in answers] == [503, 503]


def test_rs12_imaging_client_without_introspection_scope_is_503(tmp_path: Path, certs: Certificates) -> None:
    scope = " ".join(s for s in IMAGING_CLIENT_SCOPE.split() if s != "introspection")
    running = start_tls_pair(tmp_path, certs, imaging_scope=scope)
    try:
        answers = [_studies(running) for _ in range(2)]
    finally:
        running.stop()
    assert [a.status_code for a in answers] == [503, 503]


def _login_cookie(url: str, verify: ssl.SSLContext | bool = True) -> str:
    with httpx.Client(timeout=30, verify=verify) as http:
        return http.get(f"{url}/ui/login").headers["set-cookie"]


def test_rs11_session_cookie_is_secure_over_tls_and_behind_a_tls_proxy(pair: TlsPair, tmp_path: Path) -> None:
    """Directly over TLS, and over plain HTTP from a TLS-terminating proxy (public_url https)."""
    assert "secure" in _login_cookie(pair.ehr_origin, pair.certs.client_context()).lower()
    stack = LocalStack(tmp_path)
    stack.extra_ehr_env = {"IMAGEBRIDGE_EHR_PUBLIC_URL": "https://ehr.example.org"}
    stack.provision()
    stack.ehr = start_service(
        "ehr", stack.ehr_env(), f"http://127.0.0.1:{stack.ehr_port}", tmp_path / "ehr.log"
    )
    try:
        behind_proxy = _login_cookie(f"http://127.0.0.1:{stack.ehr_port}")
    finally:
        stack.stop()
    assert "secure" in behind_proxy.lower()
    assert "httponly" in behind_proxy.lower()
