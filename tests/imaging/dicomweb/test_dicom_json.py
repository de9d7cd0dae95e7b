"""Tests for imagebridge.imaging.dicomweb.dicom_json (PS3.18 Annex F)."""

import base64
import io
from pathlib import Path

import orjson
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imagebridge.imaging.dicomweb.dicom_json import (
    MAX_DEPTH,
    DepthError,
    TagPath,
    dataset_to_json,
    instance_json_from_file,
    json_bytes,
    parse_tag_path,
    tag_path_string,
)


def _uri(path: TagPath) -> str:
    return "bulk/" + tag_path_string(path)


def _instance() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.PatientName = "Doe^Jane=山田^太郎=やまだ^たろう"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDescription = ""
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 8
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.add_new(0x00280000, "UL", 4)  # a group length that must vanish
    ds.PixelData = b"\x01\x02\x03\x04"
    return ds


def _file(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(
        buffer, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True
    )
    return buffer.getvalue()


def test_keys_sorted_uppercase_without_group_length() -> None:
    ds = _instance()
    ds.add_new(0x0009_0010, "LO", "ACME")  # private creator
    ds.add_new(0x0009_10AB, "LO", "private")
    result = dataset_to_json(ds, bulkdata_uri=_uri)
    keys = list(result)
    assert keys == sorted(keys)
    assert all(len(k) == 8 and k == k.upper() for k in keys)
    assert "00280000" not in result
    assert result["000910AB"] == {"vr": "LO", "Value": ["private"]}
    assert list(orjson.loads(json_bytes(result))) == keys


def test_strings_person_names_and_empty() -> None:
    result = dataset_to_json(_instance(), bulkdata_uri=None)
    assert result["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert result["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}
    assert result["00081030"] == {"vr": "LO"}
    assert result["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }


def test_person_name_groups_and_multi_values() -> None:
    ds = Dataset()
    ds.add_new(0x00100010, "PN", "=山田^太郎")
    ds.add_new(0x00081060, "PN", ["A^B", "", "C^D"])
    ds.add_new(0x00080060, "CS", "")
    ds.add_new(0x00200020, "CS", ["A", "", "P"])
    result = dataset_to_json(ds, bulkdata_uri=None)
    assert result["00100010"] == {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}
    assert result["00081060"] == {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, None, {"Alphabetic": "C^D"}]}
    assert result["00080060"] == {"vr": "CS"}
    assert result["00200020"] == {"vr": "CS", "Value": ["A", None, "P"]}


def test_numbers_and_attribute_tags() -> None:
    ds = Dataset()
    ds.add_new(0x00280010, "US", 512)
    ds.add_new(0x00281052, "DS", "-1024")
    ds.add_new(0x00281050, "DS", ["40.5", "1e2"])
    ds.add_new(0x00200013, "IS", "7")
    ds.add_new(0x00189219, "SS", -3)
    ds.add_new(0x0018602C, "FD", [0.5, float("nan")])
    ds.add_new(0x00209165, "AT", [0x00100010, 0x7FE00010])
    ds.add_new(0x00720079, "UV", [1, 2**60])
    ds.add_new(0x00720068, "LT", "a\\b")
    result = dataset_to_json(ds, bulkdata_uri=None)
    assert result["00280010"] == {"vr": "US", "Value": [512]}
    assert result["00281052"] == {"vr": "DS", "Value": [-1024]}
    assert result["00281050"] == {"vr": "DS", "Value": [40.5, 100.0]}
    assert result["00200013"] == {"vr": "IS", "Value": [7]}
    assert result["00189219"] == {"vr": "SS", "Value": [-3]}
    assert result["0018602C"] == {"vr": "FD", "Value": [0.5, None]}
    assert result["00209165"] == {"vr": "AT", "Value": ["00100010", "7FE00010"]}
    assert result["00720079"] == {"vr": "UV", "Value": [1, str(2**60)]}
    assert result["00720068"] == {"vr": "LT", "Value": ["a\\b"]}
    assert b"NaN" not in json_bytes(result)


@pytest.mark.parametrize(
    ("vr", "raw", "expected"),
    [
        ("IS", b"12 ", [12]),
        ("IS", b"abc", ["abc"]),
        ("IS", b"1.5", ["1.5"]),
        ("IS", b"99999999999", ["99999999999"]),
        ("IS", b"1\\\\x", [1, None, "x"]),
        ("DS", b"1.50\\NaN \\inf", [1.5, "NaN", "inf"]),
        ("DS", b" .5e1", [5.0]),
        ("DS", b"12345678901234567", ["12345678901234567"]),
        ("DS", b"1234567890123456", [1234567890123456]),
        ("DS", b"1e999", ["1e999"]),
        ("DS", b"-0.25E-2", [-0.0025]),
        ("DS", b"1.23456789012345678", ["1.23456789012345678"]),
        ("DS", b"", None),
        ("DS", b"\xe9", ["\xe9"]),  # decoded as pydicom decodes it (its default encoding)
    ],
)
def test_is_ds_from_raw_bytes(vr: str, raw: bytes, expected: list[object] | None) -> None:
    ds = Dataset()
    tag = 0x00200013 if vr == "IS" else 0x00281050
    ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)  # as read from a file
    attribute = dataset_to_json(ds, bulkdata_uri=None)[f"{tag:08X}"]
    assert attribute == ({"vr": vr} if expected is None else {"vr": vr, "Value": expected})


def test_sequences_items_paths_and_empty_items() -> None:
    ds = Dataset()
    inner = Dataset()
    inner.add_new(0x00181072, "OB", b"x" * 2000)
    inner.add_new(0x00181073, "OB", b"yz")
    ds.add_new(0x00540016, "SQ", [Dataset(), inner])
    ds.add_new(0x00081115, "SQ", [])
    result = dataset_to_json(ds, bulkdata_uri=_uri, inline_threshold=1024)
    assert result["00540016"] == {
        "vr": "SQ",
        "Value": [
            {},
            {
                "00181072": {"vr": "OB", "BulkDataURI": "bulk/00540016/1/00181072"},
                "00181073": {"vr": "OB", "InlineBinary": base64.b64encode(b"yz").decode()},
            },
        ],
    }
    assert result["00081115"] == {"vr": "SQ"}


def test_binary_values_threshold_and_pixel_data() -> None:
    ds = _instance()
    ds.add_new(0x00291010, "OB", b"a" * 9)
    ds.add_new(0x00291011, "UN", b"b" * 10)
    ds.add_new(0x00660016, "OF", b"")
    with_uri = dataset_to_json(ds, bulkdata_uri=_uri, inline_threshold=10)
    assert with_uri["00291010"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"a" * 9).decode()}
    assert with_uri["00291011"] == {"vr": "UN", "BulkDataURI": "bulk/00291011"}
    assert with_uri["00660016"] == {"vr": "OF"}
    assert with_uri["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/7FE00010"}  # 4 bytes, still by reference
    without = dataset_to_json(ds, bulkdata_uri=None, inline_threshold=10)
    assert without["7FE00010"] == {"vr": "OB", "InlineBinary": base64.b64encode(b"\x01\x02\x03\x04").decode()}
    assert without["00291011"]["InlineBinary"] == base64.b64encode(b"b" * 10).decode()


def test_ambiguous_vrs_resolved() -> None:
    ds = Dataset()
    ds.PixelRepresentation = 1
    ds.SmallestImagePixelValue = -5
    ds.PixelData = b"\x00\x01"  # no BitsAllocated: OW, the dictionary's choice for pixel data
    result = dataset_to_json(ds, bulkdata_uri=None)
    assert result["00280106"] == {"vr": "SS", "Value": [-5]}
    assert result["7FE00010"]["vr"] == "OW"
    unsigned = Dataset()
    unsigned.SmallestImagePixelValue = 5  # no PixelRepresentation: US
    assert dataset_to_json(unsigned, bulkdata_uri=None)["00280106"] == {"vr": "US", "Value": [5]}


def _nested(levels: int) -> Dataset:
    ds = Dataset()
    ds.PatientID = "leaf"
    for _ in range(levels):
        parent = Dataset()
        parent.add_new(0x00400275, "SQ", [ds])
        ds = parent
    return ds


def test_depth_limit() -> None:
    result = dataset_to_json(_nested(MAX_DEPTH), bulkdata_uri=None)
    for _ in range(MAX_DEPTH):
        result = result["00400275"]["Value"][0]
    assert result == {"00100020": {"vr": "LO", "Value": ["leaf"]}}
    with pytest.raises(DepthError, match="deeper than 64"):
        dataset_to_json(_nested(MAX_DEPTH + 1), bulkdata_uri=None)
    with pytest.raises(DepthError):
        dataset_to_json(_nested(900), bulkdata_uri=None)


def test_tag_paths() -> None:
    assert tag_path_string((0x7FE00010,)) == "7FE00010"
    assert tag_path_string((0x00540016, 12, 0x00181072)) == "00540016/12/00181072"
    assert parse_tag_path("00540016/12/00181072") == (0x00540016, 12, 0x00181072)
    assert parse_tag_path("7fe00010") == (0x7FE00010,)
    for bad in (
        "",
        "7FE0001",
        "00540016/1",
        "00540016/01/00181072",
        "00540016/x/00181072",
        "../etc",
        "/".join(["00540016", "0"] * 70 + ["00181072"]),
    ):
        with pytest.raises(ValueError, match="malformed tag path"):
            parse_tag_path(bad)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_instance_json_from_file_matches_dataset(syntax: str, tmp_path: Path) -> None:
    data = _file(_instance(), syntax)
    expected = dataset_to_json(_instance(), bulkdata_uri=_uri)
    if syntax == ImplicitVRLittleEndian:
        expected["7FE00010"]["vr"] = "OW"
    assert instance_json_from_file(data, _uri) == expected
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    assert instance_json_from_file(path, _uri) == expected
    assert instance_json_from_file(str(path), _uri) == expected


def test_instance_json_from_file_does_not_read_pixel_data() -> None:
    ds = _instance()
    icon = Dataset()
    icon.Rows = 1
    icon.BitsAllocated = 8
    icon.PixelData = b"\x00\x00"
    ds.IconImageSequence = [icon]
    data = _file(ds)
    truncated = data[:-2]  # pixel data cut short: unreadable if it were read
    result = instance_json_from_file(truncated, _uri, inline_threshold=1)
    assert result["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/7FE00010"}
    icon_json = result["00880200"]["Value"][0]
    assert icon_json["7FE00010"] == {"vr": "OB", "BulkDataURI": "bulk/00880200/0/7FE00010"}


def test_instance_json_from_file_without_or_with_empty_pixel_data() -> None:
    ds = _instance()
    del ds.PixelData
    assert "7FE00010" not in instance_json_from_file(_file(ds), _uri)
    ds.PixelData = b""
    assert instance_json_from_file(_file(ds), _uri)["7FE00010"] == {"vr": "OB"}


def test_instance_json_from_file_rejects_non_dicom() -> None:
    with pytest.raises(InvalidDicomError):
        instance_json_from_file(b"not dicom at all" * 20, _uri)


def test_json_bytes() -> None:
    assert (
        json_bytes([{"00100020": {"vr": "LO", "Value": ["é"]}}])
        == '[{"00100020":{"vr":"LO","Value":["é"]}}]'.encode()
    )


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "ExplVR_BigEnd.dcm", "MR_small_implicit.dcm", "chrH32.dcm", "chrSQEncoding.dcm"],
)
def test_raw_elements_convert_like_pydicom_elements(name: str) -> None:
    """Raw elements are converted without pydicom's DataElement (most of the cost), to the same
    JSON as pydicom's own elements: character sets (also inside sequence items), byte order,
    implicit VRs, LUT descriptors and ambiguous VRs included."""
    from pydicom import dcmread
    from pydicom.data import get_charset_files, get_testdata_file

    path = get_testdata_file(name) or get_charset_files(name)[0]
    raw = dcmread(path, stop_before_pixels=True)
    converted = dcmread(path, stop_before_pixels=True)
    converted.walk(lambda ds, element: None)  # every element made a DataElement by pydicom
    tags = sorted(raw.keys())  # iterating a Dataset would convert its elements
    assert any(isinstance(raw.get_item(tag), RawDataElement) for tag in tags)
    assert not any(isinstance(converted.get_item(tag), RawDataElement) for tag in tags)
    direct = json_bytes(dataset_to_json(raw, bulkdata_uri=_uri))
    assert direct == json_bytes(dataset_to_json(converted, bulkdata_uri=_uri))


@pytest.mark.parametrize("name", ["CT_small.dcm", "ExplVR_BigEnd.dcm", "MR_small_implicit.dcm", "chrH32.dcm"])
def test_values_converted_for_the_json_are_pydicoms(name: str) -> None:
    """The top-level values dataset_to_json reports are the values pydicom gives: of each tag
    converted through pydicom (not IS/DS, whose text the JSON reads itself) and of each single
    string or number raw_json read from the bytes."""
    from pydicom import dcmread
    from pydicom.data import get_charset_files, get_testdata_file

    path = get_testdata_file(name) or get_charset_files(name)[0]
    reference = dcmread(path, stop_before_pixels=True)
    values: dict[int, object] = {}
    dataset_to_json(dcmread(path, stop_before_pixels=True), bulkdata_uri=_uri, values=values)
    tags = sorted(reference.keys())  # iterating a Dataset gives its elements
    assert {0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00280010} <= set(values) <= set(tags)
    for tag, value in values.items():
        assert value == reference[tag].value, f"{tag:08X}"
