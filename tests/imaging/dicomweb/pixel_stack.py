"""Helpers for the pixel-path tests (frames, rendered, transcoding, CORS): their own stack, whose
imaging system grants CORS to :data:`VIEWER`.

pydicom's and pydicom-data's sample files are given fresh UIDs and one PatientID, sent by STOW-RS
with a modality client, published to the EHR, and read by a backend client whose Group holds
that patient: the tests exercise the real gate without touching the demo hospital's data.
"""

from __future__ import annotations

import asyncio
import functools
import io
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
from pydicom.data import DATA_ROOT, get_testdata_file
from pydicom.data.data_manager import get_external_sources
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.apps.stack import LocalStack
from imagebridge.common import jose
from imagebridge.common.multipart import iter_related
from imagebridge.ehr.admin import Admin

MRN = "PX-0001"
STUDY_UID = generate_uid(entropy_srcs=["imagebridge pixel tests study"])
READ_SCOPE = "system/ImagingStudy.rs"
#: The one origin the pixel stack's imaging system grants CORS to (an OHIF deployment's).
VIEWER = "https://viewer.example.org"
WRITE_SCOPE = "system/ImagingStudy.c"


@dataclass(frozen=True)
class Sample:
    """One stored sample: its name, the bytes sent, and its UIDs."""

    name: str
    data: bytes
    series_uid: str
    sop_uid: str

    @property
    def dataset(self) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.data))


@dataclass
class PixelStack:
    stack: LocalStack
    reader: BackendClient
    modality: BackendClient
    samples: dict[str, Sample]

    @property
    def base(self) -> str:
        return self.stack.imaging_settings.dicomweb_base

    def url(self, name: str, suffix: str = "") -> str:
        s = self.samples[name]
        return f"{self.base}/studies/{STUDY_UID}/series/{s.series_uid}/instances/{s.sop_uid}{suffix}"

    def token(self, http: httpx.Client, client: BackendClient | None = None, scope: str = READ_SCOPE) -> str:
        fhir = self.stack.ehr_settings.fhir_base
        return str(backend_token(fhir, client or self.reader, scope, http)["access_token"])


def relabel(path: str, index: int) -> Sample | None:
    """A sample file with fresh UIDs and our PatientID, in its own transfer syntax; None if unusable."""
    try:
        ds = pydicom.dcmread(path)
        if "TransferSyntaxUID" not in ds.file_meta or "SOPClassUID" not in ds:
            return None
        name = Path(path).name
        series_uid = generate_uid(entropy_srcs=[f"pixel series {name}"])
        sop_uid = generate_uid(entropy_srcs=[f"pixel instance {name}"])
        ds.PatientID = MRN
        ds.PatientName = "Pixel^Tests"
        ds.StudyInstanceUID = STUDY_UID
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = sop_uid
        ds.SeriesNumber = index + 1
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        out = io.BytesIO()
        ds.preamble = bytes(128)  # ingest zeroes the preamble (security.md DI-10)
        ds.save_as(out, enforce_file_format=True)
        pydicom.dcmread(io.BytesIO(out.getvalue()))
    except Exception:  # odd sample files (no meta, bad values) are not part of the corpus
        return None
    return Sample(name, out.getvalue(), series_uid, sop_uid)


def sample_paths() -> list[Path]:
    """pydicom's and pydicom-data's sample files, from their install folders (no downloads)."""
    roots = [Path(DATA_ROOT) / "test_files"]
    roots += [Path(source.data_path) for source in get_external_sources().values()]
    return sorted((p for root in roots for p in root.rglob("*.dcm")), key=lambda p: p.name)


@functools.cache
def corpus() -> tuple[Sample, ...]:
    """Every sample file that we can relabel (pydicom rewrites it with file meta information)."""
    samples = []
    for index, path in enumerate(sample_paths()):
        if sample := relabel(str(path), index):
            samples.append(sample)
    return tuple(samples)


def bomb() -> Sample:
    """A decode bomb (security.md DI-09): 65535 x 65535 x 3 declared over a few bytes of JPEG data."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.Rows = ds.Columns = 65535
    return relabel_dataset(ds, "bomb.dcm", 9999)


def relabel_dataset(ds: Dataset, name: str, index: int) -> Sample:
    series_uid = generate_uid(entropy_srcs=[f"pixel series {name}"])
    sop_uid = generate_uid(entropy_srcs=[f"pixel instance {name}"])
    ds.PatientID = MRN
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.SeriesNumber = index
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    out = io.BytesIO()
    ds.preamble = bytes(128)
    ds.save_as(out, enforce_file_format=True)
    return Sample(name, out.getvalue(), series_uid, sop_uid)


def monochrome1() -> Sample:
    """CT_small declared MONOCHROME1 (PS3.3 C.7.6.3.1.2: minimum sample value is white)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    return relabel_dataset(ds, "mono1.dcm", 9997)


def native_bomb() -> Sample:
    """An uncompressed decode bomb: 65535 x 65535 16-bit declared over 8 bytes of Pixel Data."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.PixelData = b"\0" * 8
    return relabel_dataset(ds, "native-bomb.dcm", 9998)


def stow(http: httpx.Client, base: str, token: str, samples: list[Sample]) -> httpx.Response:
    mark = "pixel-tests-boundary-7f3a"
    body = b"".join(
        f"--{mark}\r\nContent-Type: application/dicom\r\n\r\n".encode() + s.data + b"\r\n" for s in samples
    )
    return http.post(
        f"{base}/studies",
        content=body + f"--{mark}--\r\n".encode(),
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={mark}',
            "Accept": "application/dicom+json",
        },
    )


def register(stack: LocalStack, reader: BackendClient, modality: BackendClient) -> None:
    async def run() -> None:
        admin = Admin(stack.ehr_settings)
        try:
            await admin.put_resource(
                {
                    "resourceType": "Patient",
                    "id": "pixel-patient",
                    "identifier": [{"system": "urn:imagebridge:mrn", "value": MRN}],
                    "name": [{"family": "Pixel", "given": ["Tests"]}],
                }
            )
            await admin.put_resource(
                {
                    "resourceType": "Group",
                    "id": "pixel-review",
                    "type": "person",
                    "actual": True,
                    "member": [{"entity": {"reference": "Patient/pixel-patient"}}],
                }
            )
            await admin.add_client(
                reader.client_id,
                "backend",
                scope=READ_SCOPE,
                jwks=jose.public_jwks(reader.private_jwk),
                group="Group/pixel-review",
            )
            await admin.add_client(
                modality.client_id,
                "backend",
                scope=WRITE_SCOPE,
                jwks=jose.public_jwks(modality.private_jwk),
                imaging_source=True,
            )
        finally:
            await admin.close()

    asyncio.run(run())


def wait_published(stack: LocalStack, token: str, http: httpx.Client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = http.get(
            f"{stack.ehr_settings.fhir_base}/ImagingStudy",
            params={"identifier": f"urn:dicom:uid|urn:oid:{STUDY_UID}"},
            headers={"Authorization": f"Bearer {token}"},
        )
        if found.status_code == 200 and found.json().get("entry"):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the pixel test study was not published to the EHR")
        time.sleep(0.2)


def split_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a whole ``multipart/related`` response: (headers lower-cased, body)."""
    return list(iter_related(response.headers["content-type"], [response.content], max_part_bytes=2**32))
