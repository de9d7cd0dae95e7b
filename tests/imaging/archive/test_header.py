"""header.read gives what pydicom's read_partial gives (stopped at the pixel data), or None."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from imagebridge.imaging.archive import guard, header
from imagebridge.imaging.dicomweb.dicom_json import dataset_to_json, json_bytes, read_header


def _uri(path: tuple[int, ...]) -> str:
    return "/".join(f"{part:08X}" for part in path)


def _pydicom(path: Path) -> tuple[Dataset, list[tuple[int, str | None, int]]]:
    with path.open("rb") as fp:
        return read_header(fp)


def _assert_as_pydicom_reads(path: Path) -> bool:
    """True when header.read read ``path`` (and equals pydicom), False when it left it to pydicom."""
    ts = guard.scan(path, max_inflated_bytes=1 << 30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read = header.read(path, ts)
        if read is None:
            return False
        ours, pixel = read
        reference, reference_pixel = _pydicom(path)
        assert pixel == reference_pixel
        assert (ours.is_implicit_VR, ours.is_little_endian) == (reference.is_implicit_VR, True)
        assert ours.original_character_set == reference.original_character_set
        meta_tags = list(reference.file_meta.keys())  # iterating a Dataset gives its elements
        assert list(ours.file_meta.keys()) == meta_tags
        for tag in meta_tags:
            assert ours.file_meta[tag].value == reference.file_meta[tag].value
        assert list(ours.keys()) == list(reference.keys())
        for tag, element in reference._dict.items():
            if isinstance(element, RawDataElement):  # pydicom converts undefined-length sequences
                assert ours._dict[tag] == element, (path, f"{tag:08X}")
        expected = json_bytes(dataset_to_json(_pydicom(path)[0], bulkdata_uri=_uri))
        assert json_bytes(dataset_to_json(ours, bulkdata_uri=_uri)) == expected
    return True


def _sample_files() -> list[Path]:
    paths = [Path(p) for p in get_testdata_files() + get_charset_files() if Path(p).is_file()]
    return [p for p in paths if _scannable(p)]


def _scannable(path: Path) -> bool:
    try:
        guard.scan(path, max_inflated_bytes=1 << 30)
    except (guard.Malformed, OSError):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _pydicom(path)
        except Exception:  # pydicom cannot read it: parse() refuses it before header.read
            return False
    return True


def test_every_sample_file_reads_as_pydicom_reads_it() -> None:
    """pydicom's and pydicom-data's samples (explicit and implicit VR, every compressed syntax,
    character sets, undefined-length sequences, private groups, files without pixel data)."""
    read = left = 0
    for path in _sample_files():
        if _assert_as_pydicom_reads(path):
            read += 1
        else:
            left += 1
    assert read > 200
    assert left < 30  # big-endian, deflated, UN or private undefined-length sequences


def _file(tmp_path: Path, ds: Dataset, syntax: str, name: str = "x.dcm") -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


def _instance(**attributes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^Jane"
    ds.BitsAllocated = 8
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _nested_undefined_length() -> Sequence:
    inner = Dataset()
    inner.CodeValue = "T-04000"
    inner.CodeMeaning = "Breast"
    middle = Dataset()
    middle.AnatomicRegionSequence = Sequence([inner])
    middle.AnatomicRegionSequence.is_undefined_length = True
    middle.is_undefined_length_sequence_item = True
    outer = Sequence([middle, Dataset()])
    outer.is_undefined_length = True
    return outer


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_undefined_length_sequences_and_items(tmp_path: Path, syntax: str) -> None:
    ds = _instance(ReferencedImageSequence=_nested_undefined_length(), Rows=2, Columns=2)
    ds.PixelData = bytes(8)
    assert _assert_as_pydicom_reads(_file(tmp_path, ds, syntax))


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    ds = _instance(Rows=2, Columns=2)
    ds.add_new(0x00091010, "LO", "creator")
    ds.add_new(0x00091011, "OB", bytes(range(256)) * (header.HEAD // 128))  # 2 x HEAD bytes
    ds.PixelData = bytes(8)
    assert _assert_as_pydicom_reads(_file(tmp_path, ds, ExplicitVRLittleEndian))


def test_a_file_without_pixel_data_is_read_to_its_end(tmp_path: Path) -> None:
    ds = _instance(ContentSequence=_nested_undefined_length())
    ds.add_new(0x00091010, "LO", "creator")
    ds.add_new(0x00091011, "OB", bytes(header.HEAD))  # the file is longer than the first read
    assert _assert_as_pydicom_reads(_file(tmp_path, ds, ExplicitVRLittleEndian))


def test_a_header_over_the_limit_is_left_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _instance(Rows=2, Columns=2)
    ds.add_new(0x00091010, "LO", "creator")
    ds.add_new(0x00091011, "OB", bytes(4 * header.HEAD))
    ds.PixelData = bytes(8)
    path = _file(tmp_path, ds, ExplicitVRLittleEndian)
    monkeypatch.setattr(header, "MAX_HEADER", 2 * header.HEAD)
    assert header.read(path, ExplicitVRLittleEndian) is None


@pytest.mark.parametrize(
    "name",
    ["MR_small_bigendian.dcm", "image_dfl.dcm", "UN_sequence.dcm", "nested_priv_SQ.dcm"],
)
def test_what_pydicom_reads_its_own_way_is_left_to_it(name: str) -> None:
    """Big-endian and deflated data sets, a UN and a private implicit-VR undefined-length
    sequence (pydicom decides what those hold by looking ahead)."""
    path = Path(str(get_testdata_file(name)))
    assert not _assert_as_pydicom_reads(path)


def test_an_implicit_syntax_whose_data_set_looks_explicit_is_left_to_pydicom(tmp_path: Path) -> None:
    """pydicom switches to explicit VR when the first element has a VR; header.read does not."""
    ds = _instance()
    path = _file(tmp_path, ds, ExplicitVRLittleEndian)
    data = bytearray(path.read_bytes())
    at = data.index(b"1.2.840.10008.1.2.1\x00")
    data[at : at + 20] = b"1.2.840.10008.1.2\x00\x00\x00"  # same length: implicit VR declared
    path.write_bytes(bytes(data))
    assert header.read(path, ImplicitVRLittleEndian) is None


def test_command_set_elements_are_left_to_pydicom(tmp_path: Path) -> None:
    path = _file(tmp_path, _instance(), ExplicitVRLittleEndian)
    data = path.read_bytes()
    meta_end = 132 + 12 + struct.unpack_from("<L", data, 140)[0]
    command = struct.pack("<HH2sH", 0, 0x0100, b"US", 2) + b"\x01\x00"  # (0000,0100) Command Field
    path.write_bytes(data[:meta_end] + command + data[meta_end:])
    assert header.read(path, ExplicitVRLittleEndian) is None


def test_encapsulated_pixel_data_stops_the_reading(tmp_path: Path) -> None:
    ds = _instance(Rows=2, Columns=2)
    ds.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    path = _file(tmp_path, ds, JPEGBaseline8Bit)
    assert _assert_as_pydicom_reads(path)
    read = header.read(path, JPEGBaseline8Bit)
    assert read is not None
    assert read[1] == [(0x7FE00010, "OB", 0xFFFFFFFF)]
