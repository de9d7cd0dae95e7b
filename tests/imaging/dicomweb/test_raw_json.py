"""raw_json converts element bytes to exactly the DICOM JSON pydicom's own values give.

The reference is :func:`dataset_to_json` of a data set whose elements pydicom has converted
itself (every element a DataElement); the fast path sees the same data set's raw elements.
"""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import Dataset
from pydicom.data import get_charset_files, get_testdata_files
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import RawDataElement
from pydicom.filereader import dcmread, read_dataset

from imagebridge.imaging.dicomweb import raw_json
from imagebridge.imaging.dicomweb.dicom_json import dataset_to_json, element_value, json_bytes

_EXPLICIT_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
#: Every VR but SQ, and IS/DS: dicom_json reads their text itself (invalid numbers pass as text).
_VRS = sorted(
    {"AE", "AS", "AT", "CS", "DA", "DT", "FD", "FL", "LO", "LT", "OB", "OD", "OF", "OL"}
    | {"OV", "OW", "PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"}
)
#: One public, non-repeating tag of each VR (the dictionary's first), for implicit VR data sets.
_TAG_OF = {
    vr: min(tag for tag, entry in DicomDictionary.items() if entry[0] == vr and tag >> 16 not in (0x0002,))
    for vr in _VRS
}
_SIZES = {"AT": 4, "FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}
_CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 144", b"\\ISO 2022 IR 87", b"ISO_IR 13 "]
#: Bytes values are made of: separators, padding, escapes, and text in several encodings.
_PIECES = st.sampled_from(
    [
        *(b"\\", b"=", b"^", b" ", b"\x00", b"\x1b$B", b"1", b"-2.5e3", b"A", b"x", b"\xe9", b"\xc3\xa9"),
        *(b"\xff\xfe", b"\xd0\x96", b"\x7f", b"\t", b"1.2.840", b"20240102", b"=\\"),
    ]
)


def _uri(path: tuple[int, ...]) -> str:
    return "/".join(map(str, path))


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b" "
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in _EXPLICIT_LONG:
        return head + vr.encode() + b"\0\0" + struct.pack("<L", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def _datasets(body: bytes, implicit: bool) -> tuple[Dataset, Dataset]:
    """(raw, converted by pydicom) data sets read from ``body``."""
    raw = read_dataset(io.BytesIO(body), implicit, True)
    converted = read_dataset(io.BytesIO(body), implicit, True)
    try:
        converted.walk(lambda ds, element: None)
    except Exception:  # pydicom cannot convert a value: then neither path can
        assume(False)
    return raw, converted


def _same_json(raw: Dataset, converted: Dataset) -> None:
    try:
        expected = json_bytes(dataset_to_json(converted, bulkdata_uri=_uri))
    except Exception:  # pydicom cannot convert this either (the fast path may)
        assume(False)
    values: dict[int, Any] = {}
    assert json_bytes(dataset_to_json(raw, bulkdata_uri=_uri, values=values)) == expected
    for tag, value in values.items():
        assert value == converted[tag].value, f"{tag:08X}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(_VRS), st.lists(_PIECES, max_size=8).map(b"".join)), max_size=6),
    st.sampled_from(_CHARSETS),
    st.booleans(),
    st.integers(0, 3),
)
def test_any_value_of_any_vr_converts_as_pydicom_converts_it(
    elements: list[tuple[str, bytes]], charset: bytes | None, implicit: bool, binary_size: int
) -> None:
    """Values built from separators, padding, ISO 2022 escapes and bytes of several character
    sets, in every VR, explicit or implicit, under several Specific Character Sets."""
    chosen: dict[int, bytes] = {}
    if charset is not None:
        chosen[0x00080005] = _element(0x00080005, "CS", charset, implicit)
    for index, (vr, value) in enumerate(elements):
        tag = _TAG_OF[vr] if implicit else 0x00091000 + index  # private tags keep explicit VRs
        if vr in raw_json.BINARY_VRS:
            value = bytes(range(binary_size * 4))
        elif vr in _SIZES:  # a wrong length makes pydicom try other VRs: test_left_to_pydicom
            value += bytes(-len(value) % _SIZES[vr])
        chosen[tag] = _element(tag, vr, value, implicit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values it tolerates
        _same_json(*_datasets(b"".join(chosen[tag] for tag in sorted(chosen)), implicit))


@pytest.mark.parametrize(
    ("vr", "value", "items"),
    [
        ("AE", b" A \\ B ", ["A", "B"]),
        ("CS", b"A\\\\B ", ["A", None, "B"]),
        ("CS", b"  ", None),
        ("UI", b"1.2.3\x00", ["1.2.3"]),
        ("UR", b"http://x \t", ["http://x"]),
        ("LO", b"a \\b\x00", ["a", "b"]),
        ("LT", b"a\\b  ", ["a\\b"]),
        ("PN", b"A^B=C\\=D", [{"Alphabetic": "A^B", "Ideographic": "C"}, {"Ideographic": "D"}]),
        ("PN", b"===", None),
        ("US", b"\x01\x00\x02\x00", [1, 2]),
        ("FL", struct.pack("<2f", float("nan"), 1.5), [None, 1.5]),
        ("UV", struct.pack("<Q", 2**60), [str(2**60)]),
        ("AT", b"\x10\x00\x20\x00", ["00100020"]),
    ],
)
def test_examples(vr: str, value: bytes, items: list[Any] | None) -> None:
    raw = RawDataElement(0x00091000, vr, len(value), value, 0, False, True)
    converted = raw_json.convert(raw, "iso8859")
    assert converted is not None
    assert converted.items == items


@pytest.mark.parametrize(
    "raw",
    [
        RawDataElement(0x00091000, "US", 3, b"\x01\x00\x02", 0, False, True),  # pydicom tries other VRs
        RawDataElement(0x00091000, "US", 2, b"\x00\x01", 0, False, False),  # big endian
        RawDataElement(0x00091000, "SQ", 0, b"", 0, False, True),
        RawDataElement(0x00091000, "UN", 2, b"ab", 0, False, True),
        RawDataElement(0x00091000, "DS", 2, b"1 ", 0, False, True),
        RawDataElement(0x00091000, None, 2, b"ab", 0, True, True),  # private, implicit: no VR
        RawDataElement(0x00280106, None, 2, b"\x01\x00", 0, True, True),  # US or SS
        RawDataElement(0x00281101, "US", 6, bytes(6), 0, False, True),  # LUT descriptor
        RawDataElement(0x00091000, "LO", 2, b"\x1b(", 0, False, True),  # ISO 2022 escape
        RawDataElement(0x00091000, "OB", 0xFFFFFFFF, b"ab", 0, False, True),  # undefined length
    ],
)
def test_left_to_pydicom(raw: RawDataElement) -> None:
    assert raw_json.convert(raw, "iso8859") is None


def test_text_that_its_character_set_cannot_decode_is_left_to_pydicom() -> None:
    raw = RawDataElement(0x00100010, "PN", 2, b"\xc3(", 0, False, True)
    assert raw_json.convert(raw, "UTF8") is None
    assert raw_json.convert(raw, None) is None  # several character sets
    assert raw_json.text_codec(["iso8859", "iso2022_jp"]) is None
    assert raw_json.text_codec(["UTF8"]) == "UTF8"


def test_every_sample_file_converts_as_pydicom_converts_it() -> None:
    """Every pydicom and pydicom-data sample (character sets, private groups, byte orders, odd
    VRs): the JSON from raw elements equals the JSON from pydicom's converted elements, and each
    value element_value reads is pydicom's."""
    compared = 0
    for path in get_testdata_files() + get_charset_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read = _read_both(path)
            if read is None:
                continue
            raw, converted, expected = read
            assert json_bytes(dataset_to_json(raw, bulkdata_uri=_uri)) == expected, path
            fresh = dcmread(path, stop_before_pixels=True)
            for tag in [tag for tag in sorted(fresh.keys()) if converted[tag].VR != "SQ"]:
                reference = converted[tag].value
                assert element_value(fresh, tag) == reference or reference != reference, (path, tag)
        compared += 1
    assert compared > 200


def _read_both(path: str) -> tuple[Dataset, Dataset, bytes] | None:
    """(raw, converted by pydicom, the JSON of the converted) of a sample file; None when it is not
    a DICOM file or pydicom cannot convert it."""
    try:
        raw = dcmread(path, stop_before_pixels=True)
        converted = dcmread(path, stop_before_pixels=True)
        converted.walk(lambda ds, element: None)
        return raw, converted, json_bytes(dataset_to_json(converted, bulkdata_uri=_uri))
    except Exception:
        return None
