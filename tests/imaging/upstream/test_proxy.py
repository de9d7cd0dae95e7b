"""Proxy mode end to end (issue 6 §7): imagebridge in front of a real Orthanc that keeps the archive.

The demo studies go straight into Orthanc by STOW-RS; the imaging system runs with
``upstream_url`` pointing at it, ``imagebridge imaging sync`` publishes them to the EHR, and the
backend client flow (token → EHR search → Endpoint → WADO-RS) runs through the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from tests.conftest import TEST_SCALE
from tests.gate_stack import audit_rows
from tests.imaging.archive.archive_stack import STOW_TYPE, add_backend, instance, multipart, part10
from tests.imaging.upstream.fake_pacs import FakePacs
from tests.imaging.upstream.tls_front import TlsFront
from tests.orthanc import Orthanc, orthanc, unavailable
from tests.security.tls_pair import Certificates, handshake, make_certificates
from tests.services import missing

from imagebridge.apps import demo_data
from imagebridge.apps.seed import Seeded, _multipart, label_and_wait, seed_ehr
from imagebridge.apps.smart_client import BackendClient, backend_token, fetch_study, iter_multipart, study_uid
from imagebridge.apps.stack import LocalStack, free_port, start_service
from imagebridge.apps.synthetic import dataset_bytes, generate_study, study_uid_for
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin

DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
UNKNOWN_STUDY = "2.25.1234567890"


@dataclass
class ProxyStack:
    stack: LocalStack
    orthanc: Orthanc
    seeded: Seeded

    @property
    def fhir_base(self) -> str:
        return self.stack.ehr_settings.fhir_base

    @property
    def base(self) -> str:
        return self.stack.imaging_settings.dicomweb_base

    @functools.cached_property
    def _token(self) -> str:
        client = self.seeded.clients["quality-review"]
        with httpx.Client(timeout=30) as http:
            return str(
                backend_token(self.fhir_base, client.backend, "system/ImagingStudy.rs", http)["access_token"]
            )

    def token(self) -> str:
        """The quality-review client's token (read-only use: shared by the module's tests)."""
        return self._token


def _load_into_orthanc(server: Orthanc) -> dict[str, str]:
    uids: dict[str, str] = {}
    boundary = "imagebridge-proxy-test"
    with server.client() as http:
        for spec, _ in demo_data.studies(TEST_SCALE):
            body = b"".join(_multipart((dataset_bytes(ds) for ds in generate_study(spec)), boundary))
            response = http.post(
                f"{server.dicomweb_base}/studies",
                content=body,
                headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
            )
            assert response.status_code == 200, response.text[:500]
            uids[spec.accession_number] = study_uid_for(spec)
    return uids


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyStack]:
    tmp = tmp_path_factory.mktemp("proxy")
    if reason := unavailable():
        missing(reason)
    with orthanc(tmp / "orthanc") as server:
        uids = _load_into_orthanc(server)
        stack = LocalStack(
            tmp / "stack",
            upstream_url=server.dicomweb_base,
            extra_imaging_env={
                "IMAGEBRIDGE_IMAGING_UPSTREAM_AUTH": server.auth,
                "IMAGEBRIDGE_IMAGING_UPSTREAM_SYNC_INTERVAL": "3600",
                "IMAGEBRIDGE_IMAGING_CAPABILITY_URLS": "true",
            },
        )
        stack.provision()
        try:
            clients = seed_ehr(stack)
            stack.start()
            sync = subprocess.run(
                [sys.executable, "-m", "imagebridge", "imaging", "sync", "--all"],
                env={**os.environ, **stack.imaging_env()},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert sync.returncode == 0, sync.stdout + sync.stderr
            assert f"{len(uids)} studies found upstream" in sync.stdout
            yield ProxyStack(stack, server, Seeded(clients, uids, label_and_wait(stack, uids)))
        finally:
            stack.stop()


def _expected(accession: str) -> set[str]:
    spec = next(s for s, _ in demo_data.studies(TEST_SCALE) if s.accession_number == accession)
    return {hashlib.sha256(dataset_bytes(ds)).hexdigest() for ds in generate_study(spec)}


def test_backend_client_flow_through_the_proxy_is_byte_identical(proxy: ProxyStack) -> None:
    token = proxy.token()
    with httpx.Client(timeout=60) as http:
        bundle = http.get(
            f"{proxy.fhir_base}/ImagingStudy",
            params={"patient": "alice", "_include": "ImagingStudy:endpoint"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        studies = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
        ct = next(s for s in studies if any(i.get("value") == "ACC-1001" for i in s["identifier"]))
        assert study_uid(ct) == proxy.seeded.study_uids["ACC-1001"]
        received = {hashlib.sha256(p).hexdigest() for p in fetch_study(ct, bundle, token, http)}
    assert received == _expected("ACC-1001")
    assert len(received) == ct["numberOfInstances"]
    assert ct["series"][0]["instance"][0]["sopClass"]["code"].startswith("urn:oid:1.2.840.10008.")


def test_a_relayed_study_is_audited_with_every_byte_it_sent(proxy: ProxyStack) -> None:
    """A whole study comes off Orthanc's socket spliced to the caller's (common/splice.py): the
    audit record counts what the caller received, and HEAD, which sends no body, counts none."""
    token = proxy.token()
    study = proxy.seeded.study_uids["ACC-1001"]
    auth = {"Authorization": f"Bearer {token}", "Accept": DICOM}
    with httpx.Client(timeout=60) as http:
        with http.stream("GET", f"{proxy.base}/studies/{study}", headers=auth) as received:
            parts = {hashlib.sha256(part).hexdigest() for part in iter_multipart(received)}
        head = http.head(f"{proxy.base}/studies/{study}", headers=auth)
    assert received.status_code == head.status_code == 200
    assert head.content == b""
    assert parts == _expected("ACC-1001")
    rows = [row for row in audit_rows(proxy.stack, token) if row.study_uid == study]
    assert [row.bytes_sent for row in rows[-2:]] == [received.num_bytes_downloaded, 0]


def _orthanc_uids(proxy: ProxyStack, study: str) -> tuple[str, str]:
    with proxy.orthanc.client() as http:
        found = http.get(f"{proxy.orthanc.dicomweb_base}/studies/{study}/instances").json()
    return found[0]["0020000E"]["Value"][0], found[0]["00080018"]["Value"][0]


def _routes(study: str, series: str, instance: str) -> list[tuple[str, str]]:
    inst = f"/studies/{study}/series/{series}/instances/{instance}"
    return [
        (f"/studies/{study}", DICOM),
        (f"/studies/{study}/series/{series}", DICOM),
        (inst, DICOM),
        (f"/studies/{study}/metadata", "application/dicom+json"),
        (f"/studies/{study}/series/{series}/metadata", "application/dicom+json"),
        (f"{inst}/metadata", "application/dicom+json"),
        (f"{inst}/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*'),
        (f"/studies/{study}/rendered", "image/jpeg"),
        (f"/studies/{study}/series/{series}/rendered", "image/jpeg"),
        (f"{inst}/rendered", "image/jpeg"),
        (f"{inst}/thumbnail", "image/jpeg"),
        (f"{inst}/bulkdata/7FE00010", "multipart/related; type=application/octet-stream"),
        (f"/studies/{study}/series", "application/dicom+json"),
        (f"/studies/{study}/instances", "application/dicom+json"),
        (f"/studies/{study}/series/{series}/instances", "application/dicom+json"),
    ]


def test_another_patients_uids_are_404_byte_identical_on_every_route(proxy: ProxyStack) -> None:
    bob = proxy.seeded.study_uids["ACC-2002"]
    series, instance = _orthanc_uids(proxy, bob)
    auth = {"Authorization": f"Bearer {proxy.token()}"}
    with httpx.Client(timeout=30) as http:
        for (path, accept), (unknown_path, _) in zip(
            _routes(bob, series, instance), _routes(UNKNOWN_STUDY, "2.25.1", "2.25.2"), strict=True
        ):
            hidden = http.get(f"{proxy.base}{path}", headers={**auth, "Accept": accept})
            unknown = http.get(f"{proxy.base}{unknown_path}", headers={**auth, "Accept": accept})
            assert hidden.status_code == 404, path
            assert (hidden.content, hidden.headers.get("content-type")) == (
                unknown.content,
                unknown.headers.get("content-type"),
            ), path


def _search(proxy: ProxyStack, path: str, params: dict[str, str]) -> list[dict[str, object]]:
    with httpx.Client(timeout=30) as http:
        response = http.get(
            f"{proxy.base}{path}", params=params, headers={"Authorization": f"Bearer {proxy.token()}"}
        )
    assert response.status_code == 200, response.text
    body: list[dict[str, object]] = response.json()
    return body


def _study(item: dict[str, object]) -> str:
    return str(item["0020000D"]["Value"][0])  # type: ignore[index]


def _alice(proxy: ProxyStack) -> set[str]:
    """Alice's studies in Orthanc (the quality-review Group is Alice), asked of Orthanc directly."""
    with proxy.orthanc.client() as http:
        found = http.get(f"{proxy.orthanc.dicomweb_base}/studies?PatientID={demo_data.ALICE.mrn}").json()
    return {_study(s) for s in found}


def test_qido_wildcards_never_leak_and_paging_counts_visible_studies(proxy: ProxyStack) -> None:
    alice = _alice(proxy)
    assert len(alice) >= 4
    for params in ({}, {"PatientName": "*"}, {"PatientID": "*"}, {"PatientID": "MRN-1002"}):
        found = {_study(s) for s in _search(proxy, "/studies", params)}
        assert found == (set() if params.get("PatientID") == "MRN-1002" else alice), params
    bob_ct = proxy.seeded.study_uids["ACC-2002"]
    for path in ("/series", "/instances"):
        assert {_study(s) for s in _search(proxy, path, {"PatientName": "*"})} == alice
        assert _search(proxy, path, {"StudyInstanceUID": bob_ct}) == []
        assert _search(proxy, path, {"PatientID": demo_data.BOB.mrn}) == []
    pages = [
        _study(s)
        for k in range(len(alice) + 1)
        for s in _search(proxy, "/studies", {"limit": "1", "offset": str(k)})
    ]
    assert sorted(pages) == sorted(alice)
    assert (
        _search(proxy, "/studies", {"limit": "2", "offset": "1"})[0]["0020000D"]
        == _search(proxy, "/studies", {})[1]["0020000D"]
    )


def test_percent_encoded_patient_name_works_through_the_proxy(proxy: ProxyStack) -> None:
    found = _search(proxy, "/studies", {"PatientName": "Anders^Ali*"})  # httpx sends %5E and %2A
    assert {_study(s) for s in found} == _alice(proxy)


def test_json_points_at_the_proxy_and_frames_accept_any_type(proxy: ProxyStack) -> None:
    study = proxy.seeded.study_uids["ACC-1001"]
    auth = {"Authorization": f"Bearer {proxy.token()}"}
    results = _search(proxy, "/studies", {"StudyInstanceUID": study})
    assert str(results[0]["00081190"]).count(proxy.base) == 1  # type: ignore[index]
    with httpx.Client(timeout=30) as http:
        metadata = http.get(
            f"{proxy.base}/studies/{study}/metadata", headers={**auth, "Accept": "application/dicom+json"}
        )
        assert metadata.status_code == 200
        assert proxy.orthanc.origin.encode() not in metadata.content
        uri = metadata.json()[0]["7FE00010"]["BulkDataURI"]
        assert uri.startswith(proxy.base)
        pixels = http.get(uri, headers={**auth, "Accept": "multipart/related; type=application/octet-stream"})
        assert pixels.status_code == 200
        series, instance = _orthanc_uids(proxy, study)
        frame = http.get(
            f"{proxy.base}/studies/{study}/series/{series}/instances/{instance}/frames/1",
            headers={**auth, "Accept": 'multipart/related; type="*/*"'},
        )
        assert frame.status_code == 200, frame.text
        assert len(list(iter_multipart(frame))) == 1
        rendered = http.get(
            f"{proxy.base}/studies/{study}/series/{series}/instances/{instance}/rendered",
            headers={**auth, "Accept": "image/jpeg"},
        )
        assert rendered.status_code == 200
        assert rendered.headers["content-type"].startswith("image/jpeg")
        assert rendered.content.startswith(b"\xff\xd8")
        # Rendered Series is relayed as the PACS answers it (Orthanc: one image, not one per instance)
        series_rendered = http.get(
            f"{proxy.base}/studies/{study}/series/{series}/rendered", headers={**auth, "Accept": "image/jpeg"}
        )
        assert series_rendered.status_code == 200, series_rendered.text
        assert series_rendered.headers["content-type"].startswith("image/jpeg")


def test_the_callers_token_never_reaches_orthanc(proxy: ProxyStack) -> None:
    token = proxy.token()
    with httpx.Client(timeout=30) as http:
        assert (
            http.get(f"{proxy.base}/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        )
    log = proxy.orthanc.log()
    authorizations = [line for line in log.splitlines() if "HTTP header: [authorization]" in line]
    assert authorizations, "Orthanc's HTTP trace shows no request headers"
    assert token not in log
    assert all("[Basic " in line for line in authorizations)


def test_stow_through_the_proxy_reaches_orthanc_and_is_published(proxy: ProxyStack) -> None:
    from imagebridge.apps.synthetic import StudySpec

    spec = StudySpec(
        demo_data.ALICE.spec,
        "CR",
        "proxy STOW",
        "CHEST",
        "20250101",
        accession_number="ACC-PX1",
        instances_per_series=1,
        rows=32,
        columns=32,
        seed=99,
    )
    uid = study_uid_for(spec)
    modality = proxy.seeded.clients["modality"]
    boundary = "proxy-stow"
    with httpx.Client(timeout=60) as http:
        token = backend_token(proxy.fhir_base, modality.backend, modality.scope, http)["access_token"]
        response = http.post(
            f"{proxy.base}/studies",
            content=_multipart((dataset_bytes(ds) for ds in generate_study(spec)), boundary),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
        )
        assert response.status_code == 200, response.text
        assert proxy.orthanc.origin not in response.text
        assert proxy.base in response.text
    # published in the background; the EHR then lets the Group's client see it
    deadline = time.monotonic() + 60
    while not _search(proxy, "/studies", {"StudyInstanceUID": uid}):
        assert time.monotonic() < deadline, "the stored study never became visible"
        time.sleep(0.2)


def test_proxy_stow_is_for_imaging_sources_only(proxy: ProxyStack) -> None:
    """ISO-08 in proxy mode: instances reach the PACS unjudged, so a writer that is not an
    imaging source (a Group holding Alice) is refused whole (403), even for Alice."""
    key = jose.generate_private_jwk("ES384")
    scope = "system/ImagingStudy.crs"

    async def register() -> None:
        admin = Admin(proxy.stack.ehr_settings)
        try:
            await add_backend(admin, "proxy-writer", scope, key, "Group/quality-review")
        finally:
            await admin.close()

    asyncio.run(register())
    with httpx.Client(timeout=60) as http:
        token = backend_token(proxy.fhir_base, BackendClient("proxy-writer", key), scope, http)[
            "access_token"
        ]
        response = http.post(
            f"{proxy.base}/studies",
            content=multipart([part10(instance(patient_id=demo_data.ALICE.mrn, seed=31))]),
            headers={"Authorization": f"Bearer {token}", "Content-Type": STOW_TYPE},
        )
    assert response.status_code == 403, response.text
    assert "imaging source" in response.text


@pytest.mark.slow
def test_a_large_study_streams_both_ways_in_constant_memory(proxy: ProxyStack) -> None:
    """256 MB stored through the proxy (STOW-RS) and read back (WADO-RS): imaging RSS stays flat."""
    from pydicom.uid import generate_uid
    from tests.imaging.archive.archive_stack import BOUNDARY, STOW_TYPE, instance, part10
    from tests.imaging.test_memory import SIDE, RssSampler

    def body(count: int) -> Iterator[bytes]:
        for number in range(count):
            ds = instance(study=study, series=series, number=number, patient_id=demo_data.ALICE.mrn)
            ds.Rows = ds.Columns = SIDE
            ds.PixelData = pixels
            data = part10(ds)
            sent.append(len(data))
            yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
        yield f"--{BOUNDARY}--\r\n".encode()

    slices, limit = 32, 48 * 1024 * 1024
    study, series = generate_uid(), generate_uid()
    pixels = bytes(range(256)) * (SIDE * SIDE * 2 // 256)
    modality = proxy.seeded.clients["modality"]
    assert proxy.stack.imaging is not None
    sampler = RssSampler(proxy.stack.imaging.process.pid)
    baseline = sampler.peak
    sampler.start()
    sent: list[int] = []
    received = 0
    try:
        with httpx.Client(timeout=300) as http:
            stow_token = backend_token(proxy.fhir_base, modality.backend, modality.scope, http)[
                "access_token"
            ]
            stored = http.post(
                f"{proxy.base}/studies",
                content=body(slices),
                headers={"Authorization": f"Bearer {stow_token}", "Content-Type": STOW_TYPE},
            )
            assert stored.status_code == 200, stored.text
            url = f"{proxy.base}/studies/{study}"
            auth = {"Authorization": f"Bearer {proxy.token()}", "Accept": DICOM}
            deadline = time.monotonic() + 60
            while True:  # published in the background, then the EHR lets the Group see it
                with http.stream("GET", url, headers=auth) as response:
                    if response.status_code == 200:
                        for chunk in response.iter_bytes(1024 * 1024):
                            received += len(chunk)
                        break
                assert time.monotonic() < deadline, "the stored study never became visible"
                time.sleep(0.2)
    finally:
        sampler.done.set()
        sampler.join()
    assert BOUNDARY not in stored.text
    assert received > sum(sent) >= 256 * 1024**2
    assert sampler.peak - baseline < limit, f"RSS grew by {(sampler.peak - baseline) / 2**20:.1f} MB"


@contextlib.contextmanager
def _second_proxy(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory, upstream_url: str, **env: str
) -> Iterator[str]:
    """Another proxy process (same public URL, so the same token audience) in front of
    ``upstream_url``; yields its DICOMweb base."""
    port = free_port()
    service = start_service(
        "imaging",
        {
            **proxy.stack.imaging_env(),
            "IMAGEBRIDGE_IMAGING_PORT": str(port),
            "IMAGEBRIDGE_IMAGING_DATA_DIR": str(tmp_path_factory.mktemp("second-proxy")),
            "IMAGEBRIDGE_IMAGING_PUBLIC_URL": proxy.stack.imaging_settings.origin,
            "IMAGEBRIDGE_IMAGING_UPSTREAM_URL": upstream_url,
            **env,
        },
        f"http://127.0.0.1:{port}",
        proxy.stack.data_dir / f"second-proxy-{port}.log",
    )
    try:
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        service.stop()


def test_an_unreachable_upstream_is_502_and_hidden_studies_stay_404(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with _second_proxy(proxy, tmp_path_factory, f"http://127.0.0.1:{free_port()}/dicom-web") as base:
        auth = {"Authorization": f"Bearer {proxy.token()}", "Accept": DICOM}
        alice_ct, bob_ct = proxy.seeded.study_uids["ACC-1001"], proxy.seeded.study_uids["ACC-2002"]
        with httpx.Client(timeout=30) as http:
            assert http.get(f"{base}/studies/{alice_ct}", headers=auth).status_code == 502
            assert (
                http.get(f"{base}/studies", headers={"Authorization": auth["Authorization"]}).status_code
                == 502
            )
            hidden = http.get(f"{base}/studies/{bob_ct}", headers=auth)
            unknown = http.get(f"{base}/studies/{UNKNOWN_STUDY}", headers=auth)
        assert hidden.status_code == 404
        assert hidden.content == unknown.content


_JSON = "application/dicom+json"


@pytest.mark.parametrize("mode", ["html", "status_500", "unauthorized", "redirect", "slow"])
def test_a_failing_or_garbage_pacs_is_502_on_every_kind_of_route(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory, mode: str
) -> None:
    """Whatever the PACS does wrong (an HTML sign-in page, 5xx, refusing imagebridge's own
    credentials, redirecting elsewhere, not answering within ``upstream_timeout``) is 502 —
    never its body, never its redirect — while a study the caller may not see stays 404."""
    alice, bob = proxy.seeded.study_uids["ACC-1001"], proxy.seeded.study_uids["ACC-2002"]
    auth = {"Authorization": f"Bearer {proxy.token()}"}
    with (
        FakePacs() as pacs,
        _second_proxy(
            proxy,
            tmp_path_factory,
            pacs.base,
            IMAGEBRIDGE_IMAGING_UPSTREAM_TIMEOUT="1",
            IMAGEBRIDGE_IMAGING_UPSTREAM_QUIRKS="",
        ) as base,
    ):
        pacs.mode = mode
        with httpx.Client(timeout=30) as http:
            for path, accept in (
                (f"/studies/{alice}", DICOM),
                (f"/studies/{alice}/metadata", _JSON),
                (f"/studies/{alice}/series", _JSON),
                ("/studies", _JSON),
                ("/instances", _JSON),
            ):
                response = http.get(f"{base}{path}", headers={**auth, "Accept": accept})
                assert response.status_code == 502, (path, response.status_code, response.text[:200])
                assert "location" not in response.headers
                assert b"sign in" not in response.content
                assert response.json()["message"].startswith("the upstream PACS")
            hidden = http.get(f"{base}/studies/{bob}", headers={**auth, "Accept": DICOM})
            unknown = http.get(f"{base}/studies/{UNKNOWN_STUDY}", headers={**auth, "Accept": DICOM})
    assert hidden.status_code == 404
    assert hidden.content == unknown.content


def test_a_query_the_pacs_refuses_as_such_keeps_its_status(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    alice = proxy.seeded.study_uids["ACC-1001"]
    auth = {"Authorization": f"Bearer {proxy.token()}", "Accept": _JSON}
    with (
        FakePacs() as pacs,
        _second_proxy(proxy, tmp_path_factory, pacs.base, IMAGEBRIDGE_IMAGING_UPSTREAM_QUIRKS="") as base,
    ):
        pacs.mode = "bad_request"
        with httpx.Client(timeout=30) as http:
            everywhere = http.get(f"{base}/studies", params={"00291010": "x"}, headers=auth)
            in_study = http.get(f"{base}/studies/{alice}/series", params={"00291010": "x"}, headers=auth)
            # a whole study comes off the PACS's socket, spliced (its body has a Content-Length)
            study = http.get(f"{base}/studies/{alice}", headers={**auth, "Accept": DICOM})
    assert everywhere.status_code == 400
    assert in_study.status_code == 400
    assert study.status_code == 400
    assert study.json() == {"error": "unsupported attribute"}


_CA_FILE = "IMAGEBRIDGE_IMAGING_UPSTREAM_CA_FILE"


@pytest.fixture(scope="module")
def upstream_certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("upstream-certs"))


def test_an_https_upstream_of_a_private_ca_is_trusted_through_upstream_ca_file(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory, upstream_certs: Certificates
) -> None:
    """Orthanc behind HTTPS with a certificate of the test's CA: QIDO-RS and metadata (the pooled
    client) and a whole study (the relay's own connection) come through, byte-identical."""
    alice = proxy.seeded.study_uids["ACC-1001"]
    auth = {"Authorization": f"Bearer {proxy.token()}"}
    ca = {_CA_FILE: str(upstream_certs.ca_file)}
    with (
        TlsFront(proxy.orthanc.origin, upstream_certs.server) as front,
        _second_proxy(proxy, tmp_path_factory, front.base, **ca) as base,
        httpx.Client(timeout=60) as http,
    ):
        found = http.get(f"{base}/studies", headers={**auth, "Accept": _JSON})
        metadata = http.get(f"{base}/studies/{alice}/metadata", headers={**auth, "Accept": _JSON})
        study = http.get(f"{base}/studies/{alice}", headers={**auth, "Accept": DICOM})
    assert found.status_code == 200, found.text
    assert {_study(s) for s in found.json()} == _alice(proxy)
    assert metadata.status_code == 200, metadata.text
    assert {_study(s) for s in metadata.json()} == {alice}
    assert study.status_code == 200, study.text
    assert {hashlib.sha256(part).hexdigest() for part in iter_multipart(study)} == _expected("ACC-1001")


@pytest.mark.parametrize("upstream", ["no_ca_file", "self_signed", "wrong_host", "tls_1_1"])
def test_an_https_upstream_not_verified_is_502(
    proxy: ProxyStack, tmp_path_factory: pytest.TempPathFactory, upstream_certs: Certificates, upstream: str
) -> None:
    """The PACS's certificate is checked against the system's trust store plus upstream_ca_file,
    for its host name, and TLS 1.2 is the least spoken, on the pooled client's and the relay's
    connections alike."""
    pem = getattr(upstream_certs, upstream, upstream_certs.server)
    cap = ssl.TLSVersion.TLSv1_1 if upstream == "tls_1_1" else ssl.TLSVersion.MAXIMUM_SUPPORTED
    ca = {} if upstream == "no_ca_file" else {_CA_FILE: str(upstream_certs.ca_file)}
    alice = proxy.seeded.study_uids["ACC-1001"]
    auth = {"Authorization": f"Bearer {proxy.token()}"}
    with (
        TlsFront(proxy.orthanc.origin, pem, cap) as front,
        _second_proxy(proxy, tmp_path_factory, front.base, **ca) as base,
        httpx.Client(timeout=60) as http,
    ):
        if upstream == "tls_1_1":  # control: the front does speak TLS 1.1
            assert handshake(front.port, cap, upstream_certs.ca_file) == "TLSv1.1"
        answers = [
            http.get(f"{base}/studies", headers={**auth, "Accept": _JSON}),
            http.get(f"{base}/studies/{alice}/metadata", headers={**auth, "Accept": _JSON}),
            http.get(f"{base}/studies/{alice}", headers={**auth, "Accept": DICOM}),
        ]
    for answer in answers:
        assert answer.status_code == 502, (answer.request.url, answer.status_code, answer.text[:200])
        assert answer.json()["message"].startswith("the upstream PACS")


def _capability(proxy: ProxyStack, study: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.post(
            f"{proxy.base}/studies/{study}/capability", headers={"Authorization": f"Bearer {proxy.token()}"}
        )


def test_capability_urls_work_the_same_in_proxy_mode(proxy: ProxyStack) -> None:
    """Issued for a visible study; followed without a token down to frames; bound to its study;
    the capability itself never reaches the PACS."""
    alice, bob = proxy.seeded.study_uids["ACC-1001"], proxy.seeded.study_uids["ACC-2002"]
    issued = _capability(proxy, alice)
    assert issued.status_code == 200, issued.text
    assert issued.headers["cache-control"] == "no-store"
    url = issued.json()["url"]
    assert url.startswith(f"{proxy.base}/cap/")
    assert url.endswith(f"/studies/{alice}")
    capability = url.split("/cap/")[1].split("/")[0]
    series, instance = _orthanc_uids(proxy, alice)
    with httpx.Client(timeout=60) as http:  # no Authorization header from here on
        study = http.get(url, headers={"Accept": DICOM})
        assert study.status_code == 200
        digests = {hashlib.sha256(part).hexdigest() for part in iter_multipart(study)}
        assert digests == _expected("ACC-1001")
        metadata = http.get(f"{url}/metadata", headers={"Accept": _JSON})
        assert metadata.status_code == 200
        assert metadata.json()[0]["0020000D"]["Value"] == [alice]
        frame = http.get(
            f"{url}/series/{series}/instances/{instance}/frames/1",
            headers={"Accept": 'multipart/related; type="*/*"'},
        )
        assert frame.status_code == 200
        widened = http.get(url.replace(alice, bob), headers={"Accept": DICOM})
        tampered = http.get(url.replace(capability, capability[:-4] + "AAAA"), headers={"Accept": DICOM})
        everywhere = http.get(f"{proxy.base}/cap/{capability}/studies", headers={"Accept": _JSON})
    assert widened.status_code == 403
    assert tampered.status_code == 403
    assert everywhere.status_code == 404  # searches across studies are not under a capability
    assert capability not in proxy.orthanc.log()
    assert capability not in proxy.stack.imaging.log()  # type: ignore[union-attr]
    assert _capability(proxy, bob).status_code == 404  # the EHR hides Bob's study from this client
    assert _capability(proxy, UNKNOWN_STUDY).status_code == 404
