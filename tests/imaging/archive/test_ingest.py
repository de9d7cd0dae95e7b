"""Spooling a part (archive/ingest.py): preamble zeroed across chunk boundaries, no file left behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tests.imaging.archive import hostile
from tests.imaging.archive.archive_stack import instance

from imagebridge.imaging.archive.ingest import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    InstanceRejected,
    ParsedInstance,
    SpooledInstance,
    parse,
    spool,
)


async def _chunks(data: bytes, size: int, fail: OSError | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
    if fail is not None:
        raise fail


def _spool(chunks: AsyncIterator[bytes], directory: Path) -> SpooledInstance:
    """Spool, then write the last bytes as the worker thread judging the instance does."""
    return anyio.run(spool, chunks, directory).finish()


@pytest.mark.parametrize("size", [1, 7, 128, 129, 4096])
def test_preamble_is_zeroed_whatever_the_chunking(tmp_path: Path, size: int) -> None:
    data = b"MZ" + bytes(range(126)) + b"DICM" + b"rest of the file" * 10
    spooled = _spool(_chunks(data, size), tmp_path)
    stored = spooled.path.read_bytes()
    assert stored == bytes(128) + data[128:]
    assert (spooled.size, spooled.sha256) == (len(data), hashlib.sha256(stored).hexdigest())


def test_disk_full_is_out_of_resources_and_leaves_nothing(tmp_path: Path) -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(InstanceRejected) as rejected:
        anyio.run(spool, _chunks(b"x" * 1000, 100, full), tmp_path)
    assert rejected.value.reason == OUT_OF_RESOURCES
    assert list(tmp_path.iterdir()) == []


def test_disk_full_at_the_last_write_is_out_of_resources_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last bytes are written in the worker thread that judges the instance (Spool.finish)."""

    class Full(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_file(fd: int, mode: str) -> Full:
        os.close(fd)
        return Full()

    pending = anyio.run(spool, _chunks(b"x" * 1000, 100), tmp_path)
    monkeypatch.setattr(os, "fdopen", full_file)
    with pytest.raises(InstanceRejected) as rejected:
        pending.finish()
    assert rejected.value.reason == OUT_OF_RESOURCES
    assert list(tmp_path.iterdir()) == []


def test_a_dropped_client_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConnectionResetError):
        anyio.run(spool, _chunks(b"x" * 1000, 100, ConnectionResetError()), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _meta_first() -> bytes:
    """File Meta Information then a data set, no preamble (pydicom ``dcmwrite`` default)."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, instance(rows=2, columns=2))
    return out.getvalue()


@pytest.mark.parametrize("size", [1, 5, 131, 132, 133, 65536])
def test_a_part_without_preamble_is_completed_whatever_the_chunking(tmp_path: Path, size: int) -> None:
    data = _meta_first()
    whole = _spool(_chunks(data, len(data)), tmp_path).path.read_bytes()
    assert whole.startswith(bytes(128) + b"DICM\x02\x00\x00\x00UL")  # Group Length added first
    spooled = _spool(_chunks(data, size), tmp_path)
    assert spooled.path.read_bytes() == whole
    assert (spooled.size, spooled.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())


@pytest.mark.parametrize("data", [b"", b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00ZZ" + b"x" * 200, b"short"])
def test_short_or_broken_starts_are_kept_for_the_guard_to_refuse(tmp_path: Path, data: bytes) -> None:
    stored = _spool(_chunks(data, 3), tmp_path).path.read_bytes()
    assert stored == bytes(min(128, len(data))) + data[128:]


@pytest.mark.parametrize("name", ["CT_small.dcm", "ExplVR_BigEnd.dcm", "MR_small_implicit.dcm", "chrH32.dcm"])
def test_attributes_read_as_pydicom_reads_them(name: str) -> None:
    """ParsedInstance reads values without pydicom storing a DataElement; they are pydicom's."""
    from pydicom.data import get_charset_files, get_testdata_file
    from pydicom.datadict import keyword_for_tag

    path = get_testdata_file(name) or get_charset_files(name)[0]
    reference = pydicom.dcmread(path, stop_before_pixels=True)
    parsed = ParsedInstance(
        SpooledInstance(Path(path), 0, ""), pydicom.dcmread(path, stop_before_pixels=True), "", []
    )
    keywords = [keyword_for_tag(tag) for tag in sorted(reference.keys())]
    for keyword in [k for k in keywords if k] + ["PatientAge"]:
        value = reference.get(keyword)
        assert parsed.attr(keyword, "-") == ("-" if value is None else str(value)), keyword
        if isinstance(value, (int, str)) and str(value).strip().lstrip("-").isdigit():
            assert parsed.int_attr(keyword) == int(value), keyword


def _indexed(path: str) -> tuple[pydicom.Dataset, ParsedInstance] | None:
    """(Dataset as pydicom reads it, ParsedInstance once its DICOM JSON was made) of a sample
    file; None when it is not a PS3.10 file or its JSON cannot be made (STOW-RS refuses it)."""
    from imagebridge.imaging.dicomweb.dicom_json import instance_json, read_header

    try:
        with open(path, "rb") as fp:
            reference, pixel_elements = read_header(fp)
        with open(path, "rb") as fp:
            parsed = ParsedInstance(
                SpooledInstance(Path(path), 0, ""), read_header(fp)[0], "", pixel_elements
            )
        parsed.attr("PatientID")  # parse() and the write check read some values first
        instance_json(parsed.dataset, pixel_elements, lambda _path: "", values=parsed.values)
    except Exception:
        return None
    return reference, parsed


def _get(ds: pydicom.Dataset, keyword: str) -> object:
    """``ds.get(keyword)``, or the exception pydicom raises converting it."""
    try:
        return ds.get(keyword)
    except Exception as exc:
        return exc


def test_attributes_after_the_json_reported_its_values_are_pydicoms() -> None:
    """Every sample file of pydicom and pydicom-data (character sets, private groups, odd VRs,
    multiple and empty values): once the instance's DICOM JSON has put its converted values into
    ParsedInstance.values, each attribute (and the index rows' numbers) reads as Dataset.get."""
    import warnings

    from pydicom.data import get_charset_files, get_testdata_files
    from pydicom.datadict import keyword_for_tag

    compared = 0
    for path in get_testdata_files() + get_charset_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as parse() reads: pydicom warns about tolerated oddities
            indexed = _indexed(path)
            if indexed is None:
                continue
            reference, parsed = indexed
            for keyword in filter(None, map(keyword_for_tag, sorted(reference.keys()))):
                expected = _get(reference, keyword)
                if isinstance(expected, Exception):
                    continue  # pydicom cannot convert it either
                assert parsed.attr(keyword, "-") == ("-" if expected is None else str(expected)), (
                    path,
                    keyword,
                )
                if isinstance(expected, int) or (isinstance(expected, str) and expected.strip().isdigit()):
                    assert parsed.int_attr(keyword) == int(expected), (path, keyword)
        compared += 1
    assert compared > 200


def test_a_character_set_pydicom_takes_for_a_raw_element_is_not_understood(tmp_path: Path) -> None:
    """A Specific Character Set written as an undefined-length sequence passes the guard; pydicom's
    reader then raises AttributeError (it converts it as a raw element): the instance is refused."""
    sop = generate_uid()
    charset = hostile.element(0x0008, 0x0005, "SQ", b"", 0xFFFFFFFF) + b"\xfe\xff\xdd\xe0" + bytes(4)
    data = hostile.meta(ExplicitVRLittleEndian, sop) + charset + hostile.header(sop)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    with pytest.raises(InstanceRejected) as raised:
        parse(SpooledInstance(path, len(data), ""), max_inflated_bytes=1 << 20)
    assert raised.value.reason == CANNOT_UNDERSTAND


@pytest.mark.parametrize(
    ("tag", "vr"),
    [(0x00080005, "US"), (0x00080016, "US"), (0x00100020, "FD")],
    ids=["Specific Character Set", "SOP Class UID", "Patient ID"],
)
def test_a_value_of_a_length_its_vr_cannot_have_is_not_understood(tmp_path: Path, tag: int, vr: str) -> None:
    """pydicom raises BytesLengthException (no ValueError) for three bytes of US or FD."""
    sop = generate_uid()
    elements = {
        0x00080016: hostile.element(0x0008, 0x0016, "UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        0x00080018: hostile.element(0x0008, 0x0018, "UI", sop.encode().ljust(len(sop) + len(sop) % 2, b"\0")),
        0x00100020: hostile.element(0x0010, 0x0020, "LO", b"MRN1"),
        0x0020000D: hostile.element(0x0020, 0x000D, "UI", b"1.2.3.4\0"),
        0x0020000E: hostile.element(0x0020, 0x000E, "UI", b"1.2.3.5\0"),
        tag: hostile.element(tag >> 16, tag & 0xFFFF, vr, b"abc"),
    }
    data = hostile.meta(ExplicitVRLittleEndian, sop) + b"".join(elements[key] for key in sorted(elements))
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    with pytest.raises(InstanceRejected) as raised:
        parse(SpooledInstance(path, len(data), ""), max_inflated_bytes=1 << 20)
    assert raised.value.reason == CANNOT_UNDERSTAND
