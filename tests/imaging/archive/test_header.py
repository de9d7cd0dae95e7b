"""header.read gives what pydicom's read_partial gives (stopped at the pixel data), or None."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from tests.imaging.archive.hostile import element, meta

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
        for tag, theirs in reference._dict.items():
            mine = ours._dict[tag]
            assert mine == theirs, (path, f"{tag:08X}")  # an undefined-length sequence is read
            if not isinstance(theirs, RawDataElement):
                flags = (mine.is_undefined_length, getattr(mine.value, "is_undefined_length", None))
                assert flags == (
                    theirs.is_undefined_length,
                    getattr(theirs.value, "is_undefined_length", None),
                )
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


def _add_sequence(ds: Dataset, tag: int, items: list[Dataset], undefined_length: bool) -> None:
    """A sequence written with an undefined length or not (pydicom's writer reads the element's
    flag, not the Sequence's)."""
    ds.add_new(tag, "SQ", Sequence(items))
    ds[tag].is_undefined_length = undefined_length


def _nested_undefined_length(ds: Dataset, tag: int) -> None:
    inner = Dataset()
    inner.CodeValue = "T-04000"
    inner.CodeMeaning = "Breast"
    middle = Dataset()
    _add_sequence(middle, 0x00082218, [inner], undefined_length=True)  # AnatomicRegionSequence
    middle.is_undefined_length_sequence_item = True
    _add_sequence(ds, tag, [middle, Dataset()], undefined_length=True)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_undefined_length_sequences_and_items(tmp_path: Path, syntax: str) -> None:
    ds = _instance(Rows=2, Columns=2)
    _nested_undefined_length(ds, 0x00081140)  # ReferencedImageSequence
    ds.PixelData = bytes(8)
    assert _assert_as_pydicom_reads(_file(tmp_path, ds, syntax))


def test_a_header_longer_than_the_first_read(tmp_path: Path) -> None:
    ds = _instance(Rows=2, Columns=2)
    ds.add_new(0x00091010, "LO", "creator")
    ds.add_new(0x00091011, "OB", bytes(range(256)) * (header.HEAD // 128))  # 2 x HEAD bytes
    ds.PixelData = bytes(8)
    assert _assert_as_pydicom_reads(_file(tmp_path, ds, ExplicitVRLittleEndian))


def test_a_file_without_pixel_data_is_read_to_its_end(tmp_path: Path) -> None:
    ds = _instance()
    _nested_undefined_length(ds, 0x0040A730)  # ContentSequence
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


_ITEM = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def _raw_file(tmp_path: Path, body: bytes, syntax: str = ExplicitVRLittleEndian) -> Path:
    path = tmp_path / "raw.dcm"
    path.write_bytes(meta(syntax, generate_uid()) + body)
    return path


def _undefined(head: bytes, *items: bytes) -> bytes:
    """An undefined-length element (``head`` its header) of undefined-length items."""
    return head + b"".join(_ITEM + item + _ITEM_END for item in items) + _SEQUENCE_END


def _implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def test_a_sequence_before_the_character_set_is_decoded_with_the_one_before_it(tmp_path: Path) -> None:
    """pydicom reads an undefined-length sequence where it meets it, with the Specific Character
    Set read so far (here the default: the later ISO_IR 192 does not apply to it)."""
    sequence = _undefined(
        element(0x0008, 0x0001, "SQ", b"", 0xFFFFFFFF), element(0x10, 0x10, "PN", "é".encode())
    )
    body = sequence + element(0x0008, 0x0005, "CS", b"ISO_IR 192") + element(0x0008, 0x0016, "UI", b"1.2\0")
    assert _assert_as_pydicom_reads(_raw_file(tmp_path, body))


def test_a_file_that_ends_with_its_meta_reads_as_pydicom_reads_it(tmp_path: Path) -> None:
    """read_partial calls an empty data set implicit VR, whatever the transfer syntax."""
    assert _assert_as_pydicom_reads(_raw_file(tmp_path, b""))


_SOP = element(0x0008, 0x0016, "UI", b"1.2\0")


@pytest.mark.parametrize(
    ("body", "syntax"),
    [
        pytest.param(  # pydicom reads the item explicit: its first length looks like a VR ("AB")
            _SOP
            + _undefined(
                element(0x0008, 0x1140, "SQ", b"", 0xFFFFFFFF),
                _undefined(
                    element(0x0009, 0x1000, "UN", b"", 0xFFFFFFFF), _implicit(0x00091001, bytes(0x4241))
                ),
            ),
            ExplicitVRLittleEndian,
            id="UN sequence item that looks explicit",
        ),
        pytest.param(  # pydicom scans Selector UN Value (VR UN) for the first delimiter
            _implicit(0x00080016, b"1.2\0")
            + _undefined(
                _implicit(0x0040A730, b"", 0xFFFFFFFF),
                _undefined(
                    _implicit(0x0072006D, b"", 0xFFFFFFFF),
                    _undefined(_implicit(0x0040A730, b"", 0xFFFFFFFF), _implicit(0x00080100, b"AB")),
                )
                + _implicit(0x00720070, b"ZZ"),
            ),
            ImplicitVRLittleEndian,
            id="undefined-length UN value holding a sequence",
        ),
        pytest.param(  # pydicom reads the fragments as items of a sequence
            _SOP
            + _undefined(
                element(0x0088, 0x0200, "SQ", b"", 0xFFFFFFFF),
                element(0x7FE0, 0x0010, "UN", b"", 0xFFFFFFFF)
                + struct.pack("<HHL", 0xFFFE, 0xE000, 12)
                + element(0x0010, 0x0010, "PN", b"", 0x7FFF)
                + b"abcd"
                + _SEQUENCE_END,
            ),
            ExplicitVRLittleEndian,
            id="nested encapsulated pixel data as UN",
        ),
        pytest.param(  # pydicom fails on it
            _undefined(element(0x0008, 0x0005, "SQ", b"", 0xFFFFFFFF), _SOP) + _SOP,
            ExplicitVRLittleEndian,
            id="Specific Character Set as a sequence",
        ),
    ],
)
def test_sequences_pydicom_reads_otherwise_than_the_guard_walks_them_are_left_to_it(
    tmp_path: Path, body: bytes, syntax: str
) -> None:
    path = _raw_file(tmp_path, body, syntax)
    assert header.read(path, guard.scan(path, max_inflated_bytes=1 << 20)) is None


_TEXT = st.sampled_from(["", "A", "Doe^Jane", "é", "Жук", "中", "a b ", "x=y", "1\\2", "^=^"])
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(("LO", "LT", "PN", "SH", "ST", "UC", "UT"), _TEXT),
    **dict.fromkeys(
        ("AE", "AS", "CS", "DA", "DT", "TM"), st.sampled_from(["", "ABC", "20240102", "A\\B", "1 "])
    ),
    "UI": st.sampled_from(["", "1.2.3", "1.2.840.10008.1.2\\1.2"]),
    "UR": st.sampled_from(["", "http://example.org/x"]),
    "IS": st.sampled_from(["", "1", "-20", "3\\4"]),
    "DS": st.sampled_from(["", "1.5", "-0.25", "1e3\\2"]),
    "AT": st.lists(st.integers(0, 2**32 - 1), max_size=2),
    "FL": st.lists(st.floats(width=32, allow_nan=False), max_size=2),  # NaN: no data set equals itself
    "FD": st.lists(st.floats(allow_nan=False), max_size=2),
    **{
        vr: st.lists(st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), max_size=3)
        for vr, bits in [("SS", 16), ("SL", 32), ("SV", 64)]
    },
    **{
        vr: st.lists(st.integers(0, 2**bits - 1), max_size=3)
        for vr, bits in [("US", 16), ("UL", 32), ("UV", 64)]
    },
    **dict.fromkeys(
        ("OB", "OD", "OF", "OL", "OV", "OW", "UN"), st.binary(max_size=16).map(lambda b: b[: len(b) // 8 * 8])
    ),
}
#: One public tag of each VR written here (the dictionary's first past group 0008, before pixel data).
_TAG_OF = {
    vr: min(tag for tag, entry in DicomDictionary.items() if entry[0] == vr and 0x0008 < tag >> 16 < 0x7FE0)
    for vr in _VALUES
}
_CHARSETS = st.sampled_from([None, "", "ISO_IR 100", "ISO_IR 192", "ISO_IR 144", ["", "ISO 2022 IR 87"]])
_PRIVATE_CREATOR = 0x00090010


def _value_elements(draw: st.DrawFn, ds: Dataset, max_size: int) -> None:
    for vr in draw(st.lists(st.sampled_from(sorted(_TAG_OF)), max_size=max_size, unique=True)):
        value = draw(_VALUES[vr])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns of values invalid for their VR
            ds.add_new(_TAG_OF[vr], vr, value[0] if isinstance(value, list) and len(value) == 1 else value)


@st.composite
def _items(draw: st.DrawFn, depth: int) -> Dataset:
    item = Dataset()
    _value_elements(draw, item, 3)
    if depth < 2 and draw(st.booleans()):
        _add_sequence(item, 0x0040A730, *draw(_sequences(depth + 1)))  # ContentSequence
    item.is_undefined_length_sequence_item = draw(st.booleans())
    return item


def _sequences(depth: int = 0) -> st.SearchStrategy[tuple[list[Dataset], bool]]:
    """A sequence's items, and whether it has an undefined length."""
    return st.tuples(st.lists(_items(depth), max_size=2), st.booleans())


@st.composite
def _data_sets(draw: st.DrawFn) -> tuple[Dataset, bool]:
    """A data set of random elements, sequences (defined or undefined lengths, nested), private
    elements, character set and pixel data; and whether pydicom may read it its own way (a private
    undefined-length sequence in implicit VR, whose VR it decides by looking ahead)."""
    implicit = draw(st.booleans())
    ds = _instance()
    charset = draw(_CHARSETS)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    _value_elements(draw, ds, 8)
    for tag in draw(st.lists(st.sampled_from([0x00081140, 0x0040A730]), unique=True)):
        _add_sequence(ds, tag, *draw(_sequences()))  # ReferencedImageSequence, ContentSequence
    private = draw(st.sampled_from(["none", "value", "sequence"]))
    if private != "none":
        ds.add_new(_PRIVATE_CREATOR, "LO", "IMAGEBRIDGE TEST")
        ds.add_new(0x00091001, "OB", draw(_VALUES["OB"]))
    if private == "sequence":
        _add_sequence(ds, 0x00091002, *draw(_sequences()))
    if draw(st.booleans()):
        ds.Rows = ds.Columns = 2
        ds.PixelData = bytes(4)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return ds, implicit and private == "sequence" and ds[0x00091002].is_undefined_length


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("header")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_data_sets())
def test_any_data_set_pydicom_writes_reads_as_pydicom_reads_it(
    directory: Path, drawn: tuple[Dataset, bool]
) -> None:
    ds, pydicoms = drawn
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of characters a character set lacks
        path = _file(directory, ds, ds.file_meta.TransferSyntaxUID)
    assert _assert_as_pydicom_reads(path) or pydicoms  # read, equal to pydicom's, or pydicom's to read
