"""STOW-RS parts without the 128-byte preamble and ``DICM`` (PS3.10 §7.1, PS3.18 §10.5), as
dicomweb-client sends a data set made in memory (pydicom ``dcmwrite`` without
``enforce_file_format``): completed into a PS3.10 file, the data set bytes kept as sent.
"""

from __future__ import annotations

import io

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import ArchiveStack, failure_reasons, instance, referenced_uids

from imagebridge.imaging.archive.ingest import CANNOT_UNDERSTAND


def _without_preamble(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds)  # what dicomweb-client's store_instances does
    return out.getvalue()


def _meta_length(data: bytes) -> int:
    fp = io.BytesIO(data)
    read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, *_: tag.group != 2)
    return fp.tell()


def test_dicomweb_client_store_of_an_in_memory_data_set(archive_stack: ArchiveStack) -> None:
    study = generate_uid()
    datasets = [instance(study=study, number=n, seed=n) for n in range(2)]
    sent = [_without_preamble(ds) for ds in datasets]
    assert all(not data.startswith(bytes(128)) and b"DICM" not in data[:200] for data in sent)
    client = DICOMwebClient(archive_stack.base, headers={"Authorization": f"Bearer {archive_stack.token()}"})
    answer = client.store_instances(datasets)
    assert "FailedSOPSequence" not in answer
    assert len(answer.ReferencedSOPSequence) == 2

    stored = sorted(
        archive_stack.retrieve(study), key=lambda b: pydicom.dcmread(io.BytesIO(b)).InstanceNumber
    )
    for data, part in zip(sent, stored, strict=True):
        assert part[:132] == bytes(128) + b"DICM"
        got = pydicom.dcmread(io.BytesIO(part))  # a PS3.10 file: no force needed
        meta = got.file_meta
        assert meta.FileMetaInformationVersion == b"\x00\x01"
        assert meta.ImplementationClassUID
        assert meta.FileMetaInformationGroupLength == _meta_length(part[132:]) - 12
        # the data set itself is byte-identical to what the client sent
        assert part[132 + _meta_length(part[132:]) :] == data[_meta_length(data) :]

    again = client.store_instances(datasets[:1])  # the same instance again: idempotent
    assert "FailedSOPSequence" not in again


def test_a_data_set_without_file_meta_is_refused(archive_stack: ArchiveStack) -> None:
    ds = instance()
    del ds.file_meta  # a bare data set: no File Meta Information, so no transfer syntax
    raw = io.BytesIO()
    pydicom.dcmwrite(raw, ds, implicit_vr=False, little_endian=True)
    good = instance()
    answer = archive_stack.stow([raw.getvalue(), _without_preamble(good)])
    assert answer.status_code == 202, answer.text
    assert failure_reasons(answer.json()) == [CANNOT_UNDERSTAND]
    assert referenced_uids(answer.json()) == [good.SOPInstanceUID]
