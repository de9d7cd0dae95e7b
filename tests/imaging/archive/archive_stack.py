"""A stack of our own for archive and STOW-RS tests: real EHR + imaging processes on loopback,
one backend client allowed to store and read (``system/ImagingStudy.crs``, Group of one patient),
and small DICOM instances made with pydicom.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imagebridge.apps.smart_client import WADO_ACCEPT, BackendClient, backend_token, iter_multipart
from imagebridge.apps.stack import LocalStack
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin

CLIENT_ID = "archive-tester"
SCOPE = "system/ImagingStudy.crs"
PATIENT_ID = "MRN-ARCHIVE-1"
BOUNDARY = "archive-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def instance(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    patient_id: str = PATIENT_ID,
    rows: int = 16,
    columns: int = 16,
    number: int = 1,
    seed: int = 0,
) -> Dataset:
    """A small valid CT image (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop = sop or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = "Archive^Test"
    ds.StudyDate = "20260101"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, rows * columns, dtype=np.uint16).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart(parts: list[bytes], boundary: str = BOUNDARY) -> bytes:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts
    )
    return body + f"--{boundary}--\r\n".encode()


def referenced_uids(answer: dict[str, Any]) -> list[str]:
    return [i["00081155"]["Value"][0] for i in answer.get("00081199", {}).get("Value", [])]


def failure_reasons(answer: dict[str, Any]) -> list[int]:
    return [i["00081197"]["Value"][0] for i in answer.get("00081198", {}).get("Value", [])]


@dataclass
class ArchiveStack:
    """A started :class:`LocalStack` plus a client that may store and read its patient's studies."""

    stack: LocalStack
    key: dict[str, Any]
    _token: tuple[str, float] = field(default=("", 0.0))

    @property
    def base(self) -> str:
        return self.stack.imaging_settings.dicomweb_base

    def token(self) -> str:
        if self._token[1] < time.time() + 30:
            with httpx.Client(timeout=30) as http:
                answer = backend_token(
                    self.stack.ehr_settings.fhir_base, BackendClient(CLIENT_ID, self.key), SCOPE, http
                )
            self._token = (answer["access_token"], time.time() + answer["expires_in"])
        return self._token[0]

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}", **extra}

    def stow(self, parts: list[bytes], study: str | None = None, **kwargs: Any) -> httpx.Response:
        url = f"{self.base}/studies" + (f"/{study}" if study else "")
        headers = self.headers(**{"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"})
        with httpx.Client(timeout=120) as http:
            return http.post(url, content=multipart(parts), headers=headers, **kwargs)

    def retrieve(self, study: str, timeout: float = 60.0) -> list[bytes]:
        """The study's instances by WADO-RS, waiting until it is published at the EHR."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=120) as http:
            while True:
                with http.stream(
                    "GET", f"{self.base}/studies/{study}", headers=self.headers(Accept=WADO_ACCEPT)
                ) as response:
                    if response.status_code == 200:
                        return list(iter_multipart(response))
                    response.read()
                if time.monotonic() > deadline:
                    raise AssertionError(f"study not retrievable: {response.status_code} {response.text}")
                time.sleep(0.2)


async def add_backend(
    admin: Admin,
    client_id: str,
    scope: str,
    key: dict[str, Any],
    group: str | None,
    *,
    imaging_source: bool = False,
) -> None:
    """Register a backend client with ``scope`` (and a Group, if given; an imaging source, which
    stores for any PatientID, if asked) unless it exists."""
    if await admin.clients.get(client_id) is None:
        jwks = jose.public_jwks(key)
        await admin.add_client(
            client_id, "backend", scope=scope, jwks=jwks, group=group, imaging_source=imaging_source
        )


def provision(stack: LocalStack, patient_id: str = PATIENT_ID) -> dict[str, Any]:
    """Register the test client and its patient + Group at the EHR; return the client's key."""
    stack.provision()
    key = jose.load_or_create_private_jwk(stack.data_dir / "archive-tester.json", "ES384")

    async def run() -> None:
        admin = Admin(stack.ehr_settings)
        try:
            await admin.put_resource(
                {
                    "resourceType": "Patient",
                    "id": "archive-patient",
                    "identifier": [{"system": "urn:imagebridge:mrn", "value": patient_id}],
                    "name": [{"family": "Archive", "given": ["Test"]}],
                }
            )
            await admin.put_resource(
                {
                    "resourceType": "Group",
                    "id": "archive-cohort",
                    "type": "person",
                    "actual": True,
                    "member": [{"entity": {"reference": "Patient/archive-patient"}}],
                }
            )
            # it feeds the archive as a modality would: instances of any PatientID (docs/policy.md)
            await add_backend(admin, CLIENT_ID, SCOPE, key, "Group/archive-cohort", imaging_source=True)
        finally:
            await admin.close()

    asyncio.run(run())
    return key


def started(
    data_dir: Path,
    *,
    database_url: str = "",
    extra_env: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[ArchiveStack]:
    """A provisioned, started stack (generator for fixtures and ``with``-less use)."""
    stack = LocalStack(data_dir, imaging_database_url=database_url, extra_imaging_env=extra_env or {})
    key = provision(stack)
    try:
        stack.start(imaging_args=("--workers", str(workers)) if workers > 1 else ())
        yield ArchiveStack(stack, key)
    finally:
        stack.stop()
