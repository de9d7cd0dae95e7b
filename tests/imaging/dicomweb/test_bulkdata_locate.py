"""Locating attribute values in stored PS3.10 files (PS3.5 §7) through ranged blob reads.

Every element of pydicom's sample files — explicit and implicit VR little endian, explicit big
endian, nested sequences, encapsulated pixel data — is located and compared with the raw bytes
pydicom reads for it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import anyio
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from imagebridge.imaging.archive.blobs import LocalBlobStore
from imagebridge.imaging.dicomweb.bulkdata import parse_range
from imagebridge.imaging.dicomweb.bulkdata_locate import BlobReader, Unlocatable, locate
from imagebridge.imaging.dicomweb.dicom_json import TagPath
from imagebridge.imaging.dicomweb.errors import DicomwebError

SAMPLES = [
    "CT_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "rtplan.dcm",
    "emri_small_RLE.dcm",
]


def _stored(tmp_path: Path, name: str) -> tuple[LocalBlobStore, str, int, Dataset]:
    source = Path(str(get_testdata_file(name)))
    data = source.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    store = LocalBlobStore(tmp_path / "blobs")
    spooled = tmp_path / f"{key}.part"
    shutil.copy(source, spooled)
    anyio.run(store.put_file, key, spooled)
    return store, key, len(data), pydicom.dcmread(source)


def _raw_values(ds: Dataset, prefix: TagPath = ()) -> list[tuple[TagPath, bytes]]:
    """(tag path, raw value bytes) of every non-sequence element, recursively."""
    found: list[tuple[TagPath, bytes]] = []
    for tag in list(ds.keys()):
        raw = ds.get_item(tag)
        path = (*prefix, int(tag))
        if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != 0xFFFFFFFF:
            found.append((path, raw.value))
        elif ds[tag].VR == "SQ":
            for index, item in enumerate(ds[tag].value):
                found.extend(_raw_values(item, (*path, index)))
    return found


@pytest.mark.parametrize("name", SAMPLES)
def test_every_value_is_found_at_its_offset(tmp_path: Path, name: str) -> None:
    store, key, size, ds = _stored(tmp_path, name)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    blob = (tmp_path / "blobs" / key[:2] / key[2:4] / key).read_bytes()
    values = _raw_values(ds)
    assert len(values) > 20

    async def check() -> None:
        reader = BlobReader(store, key, size)
        for path, expected in values:
            located = await locate(reader, transfer_syntax, path)
            assert blob[located.offset : located.offset + located.length] == expected, path

    anyio.run(check)


def test_encapsulated_pixel_data_and_missing_attributes(tmp_path: Path) -> None:
    store, key, size, ds = _stored(tmp_path, "emri_small_RLE.dcm")

    async def check() -> None:
        reader = BlobReader(store, key, size)
        pixels = await locate(reader, str(ds.file_meta.TransferSyntaxUID), (0x7FE00010,))
        assert pixels.encapsulated
        for missing in [(0x00100011,), (0x00081140, 0, 0x00081150), (0x00080008, 0, 0x00100010)]:
            with pytest.raises(Unlocatable):
                await locate(reader, str(ds.file_meta.TransferSyntaxUID), missing)

    anyio.run(check)


def test_item_index_beyond_the_sequence(tmp_path: Path) -> None:
    store, key, size, ds = _stored(tmp_path, "rtplan.dcm")
    sequence = next(e for e in ds if e.VR == "SQ")

    async def check() -> None:
        reader = BlobReader(store, key, size)
        with pytest.raises(Unlocatable):
            await locate(reader, "1.2.840.10008.1.2", (int(sequence.tag), len(sequence.value), 0x00080016))

    anyio.run(check)


def test_truncated_file_is_unlocatable(tmp_path: Path) -> None:
    store, key, size, _ = _stored(tmp_path, "CT_small.dcm")

    async def check() -> None:
        reader = BlobReader(store, key, size // 2)  # the index claims fewer bytes than the values need
        with pytest.raises(Unlocatable):
            await locate(reader, "1.2.840.10008.1.2.1", (0x7FE00010,))

    anyio.run(check)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=10-", (10, 100)),
        ("bytes=-10", (90, 100)),
        ("bytes=90-1000", (90, 100)),
        ("bytes=0-0,5-6", None),  # several ranges: the whole value
        ("items=0-1", None),
        ("bytes=9-3", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


def test_unsatisfiable_range_is_416() -> None:
    with pytest.raises(DicomwebError) as caught:
        parse_range("bytes=100-", 100)
    assert caught.value.status == 416
    assert caught.value.headers == {"Content-Range": "bytes */100"}
