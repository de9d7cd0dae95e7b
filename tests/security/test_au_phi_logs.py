"""PHI stays out of the logs (security.md §6: AU-04) against a running pair of its own.

A study with canary PHI (a PatientName, PatientID and BirthDate found nowhere else) is stored,
searched for, read and refused on the main routes, error paths included (malformed queries,
404, 401, 403, STOW failures, a FHIR search by the canary identifiers); then each request's
access line is in its service's log with every query value redacted, and neither log may contain
any canary, in any spelling. PHI belongs in the audit store only.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from sqlalchemy import func, select
from tests.gate_stack import READ_ACCEPT, GateStack, access_line, start_gate_stack

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import backend_token
from imagebridge.apps.synthetic import dataset_bytes, generate_study
from imagebridge.common import db
from imagebridge.imaging.tables import publish_queue

NAME, FAMILY, ID, BIRTH = "Zqxcanary^Vwkpheus", "Zqxcanary", "CANARY-7Q4Z9X", "19230517"
#: Every spelling a canary could be logged in.
CANARIES = (FAMILY, "Vwkpheus", ID, BIRTH, "1923-05-17")
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


@pytest.fixture(scope="module")
def phi_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    yield from start_gate_stack(tmp_path_factory, "au-phi", with_studies=False)


def _canary_instances() -> list[bytes]:
    """The first demo study with the canary's identity: a valid instance, one conflicting with
    it (same SOP Instance UID, other bytes) and a truncated one."""
    spec = demo_data.studies(0.05)[0][0]
    datasets = list(generate_study(spec))[:1]
    out = []
    for ds in datasets:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, ID, BIRTH
        out.append(dataset_bytes(ds))
    conflicting = pydicom.dcmread(io.BytesIO(out[0]))
    conflicting.StudyDescription = "other bytes"
    return [out[0], dataset_bytes(conflicting), out[0][: len(out[0]) // 2]]


def _multipart(*parts: bytes) -> bytes:
    return (
        b"".join(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts)
        + b"--b--\r\n"
    )


def _token(stack: GateStack, client_id: str) -> str:
    client = stack.seeded.clients[client_id]
    with httpx.Client(timeout=30) as http:
        token = str(backend_token(stack.fhir_base, client.backend, client.scope, http)["access_token"])
    stack.secrets.append(token)
    return token


def _published(stack: GateStack) -> None:
    """Wait until the imaging system has published every stored study to the EHR (or given up on it)."""

    async def queued() -> int:
        settings = stack.stack.imaging_settings
        engine = db.create_engine(settings.resolved_database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                count = await conn.scalar(
                    select(func.count()).select_from(publish_queue).where(publish_queue.c.attempts == 0)
                )
                return int(count or 0)
        finally:
            await engine.dispose()

    for _ in range(600):
        if asyncio.run(queued()) == 0:
            return
        asyncio.run(asyncio.sleep(0.1))
    raise AssertionError("the canary study was never published")


def _drive(stack: GateStack) -> list[httpx.Response]:
    good, conflicting, truncated = _canary_instances()
    study = str(pydicom.dcmread(io.BytesIO(good)).StudyInstanceUID)
    modality, reviewer = _token(stack, "modality"), _token(stack, "quality-review")
    alice = stack.patient_token("alice")
    base, fhir = stack.dicomweb_base, stack.fhir_base
    out: list[httpx.Response] = []
    with httpx.Client(timeout=60) as http:

        def stow(url: str, body: bytes, token: str = modality, content_type: str = STOW_TYPE) -> None:
            headers = {
                "Authorization": f"Bearer {token}",
                "Content-Type": content_type,
                "Accept": "application/dicom+json",
            }
            out.append(http.post(url, content=body, headers=headers))

        stow(f"{base}/studies", _multipart(good))
        assert out[-1].status_code == 200, out[-1].text
        _published(stack)
        stow(f"{base}/studies", _multipart(conflicting))  # 0x0111 conflict
        stow(f"{base}/studies/1.2.826.0.1.3680043.99.1", _multipart(good))  # study mismatch
        stow(f"{base}/studies", _multipart(truncated))  # unreadable
        stow(f"{base}/studies", good, content_type="application/dicom")  # not multipart
        stow(f"{base}/studies", _multipart(good), token=alice)  # 403
        stow(f"{base}/studies", _multipart(good), token="forged")  # 401
        queries = [
            {"PatientName": f"{FAMILY}*"},
            {"PatientID": ID},
            {"PatientBirthDate": BIRTH},
            {"PatientBirthDate": f"{BIRTH}-x{ID}"},  # malformed range
            {"PatientName": NAME, "fuzzymatching": f"maybe-{FAMILY}"},
            {"PatientID": ID, "includefield": f"{FAMILY}Bogus"},
            {"PatientID": ID, "limit": f"-{BIRTH}"},
        ]
        for token in (reviewer, alice, "forged", None):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            for params in queries:
                out.append(http.get(f"{base}/studies", params=params, headers=headers))
            for path, accept in (
                (f"/studies/{study}/metadata", "application/dicom+json"),
                (f"/studies/{study}", READ_ACCEPT),
                ("/studies/1.2.3.999/metadata", "application/dicom+json"),
                (f"/studies/{study}/metadata", "image/gif"),  # 406
            ):
                out.append(http.get(base + path, headers={**headers, "Accept": accept}))
            for path, params in (
                ("/Patient", {"identifier": f"{demo_data.MRN_SYSTEM}|{ID}"}),
                ("/Patient", {"name": FAMILY, "birthdate": "1923-05-17"}),
                ("/Patient", {"birthdate": f"x{BIRTH}"}),
                ("/ImagingStudy", {"patient.identifier": ID}),
            ):
                out.append(http.get(fhir + path, params=params, headers=headers))
    return out


def test_au04_no_canary_phi_in_any_log(phi_stack: GateStack) -> None:
    responses = _drive(phi_stack)
    statuses = {r.status_code for r in responses}
    assert {200, 400, 401, 403, 404, 406, 409, 415} <= statuses  # the error paths were exercised
    data = phi_stack.stack.data_dir
    logs = {p.name: p.read_text(errors="replace") for p in (data / "ehr.log", data / "imaging.log")}
    for response in responses:  # each request's access line is there, its query values redacted
        name = "imaging.log" if str(response.request.url).startswith(phi_stack.dicomweb_base) else "ehr.log"
        assert access_line(response) in logs[name], (name, access_line(response))
    for name, text in logs.items():
        for canary in CANARIES:
            leaks = [line for line in text.splitlines() if canary.lower() in line.lower()]
            assert not leaks, f"{canary!r} in {name}: {leaks[:3]}"
