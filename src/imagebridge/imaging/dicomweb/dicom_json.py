"""The DICOM JSON Model (PS3.18 Annex F) from pydicom datasets and PS3.10 files.

Rules implemented (PS3.18 §F.2): members keyed by eight upper-case hex digits in ascending order,
no Group Length (gggg,0000) elements, ``vr`` always present with at most one of ``Value``,
``BulkDataURI`` or ``InlineBinary``; PN values as ``Alphabetic``/``Ideographic``/``Phonetic``
objects (§F.2.2); SQ items as nested objects; IS/DS as numbers when valid, otherwise their string
(§F.2.3.1); AT as eight hex digits; empty values as ``vr`` only, empty items of a multi-valued
attribute as ``null`` (§F.2.5); binary values inline as base64 or by reference (§F.2.6, §F.2.7).
"""

from __future__ import annotations

import base64
import copy
import io
import math
import os
import re
from collections.abc import Callable, MutableSequence
from typing import Any, BinaryIO

import orjson
from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filereader import read_partial
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName
from pydicom.values import convert_value

from imagebridge.imaging.dicomweb import raw_json

TagPath = tuple[int, ...]
"""Where an attribute sits: tag, then (item index, tag) per enclosing sequence level."""

BulkDataURIBuilder = Callable[[TagPath], str]

MAX_DEPTH = 64
"""Deepest sequence nesting converted; deeper datasets raise :class:`DepthError`."""

BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
"""Float Pixel Data, Double Float Pixel Data and Pixel Data: always sent by reference."""

_INTEGER_VRS = frozenset({"SL", "SS", "UL", "US"})
_FLOAT_VRS = frozenset({"FL", "FD"})
_BIG_INTEGER_VRS = frozenset({"SV", "UV"})
_IS = re.compile(r"[+-]?[0-9]{1,12}")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DS = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TAG_PATH_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_TAG_PATH_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
#: VRs whose raw bytes convert to the value pydicom's element would hold without the data set's
#: help: not SQ (items), not UN (pydicom may look the VR up), not IS/DS (read as text below).
_DIRECT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DT", "FD", "FL", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW"}
    | {"PN", "SH", "SL", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UR", "US", "UT", "UV"}
)


class DepthError(ValueError):
    """Sequences nested deeper than :data:`MAX_DEPTH` (security.md DI-03)."""


def tag_path_string(path: TagPath) -> str:
    """``(0x00540016, 0, 0x00181072)`` → ``"00540016/0/00181072"`` (a BulkDataURI path segment)."""
    return "/".join(f"{part:08X}" if position % 2 == 0 else str(part) for position, part in enumerate(path))


def parse_tag_path(value: str) -> TagPath:
    """Inverse of :func:`tag_path_string`; raises ValueError for anything it would not produce."""
    pieces = value.split("/")
    if len(pieces) % 2 == 0 or len(pieces) > 2 * MAX_DEPTH + 1:
        raise ValueError(f"malformed tag path {value[:200]!r}")
    path = []
    for position, piece in enumerate(pieces):
        pattern = _TAG_PATH_TAG if position % 2 == 0 else _TAG_PATH_INDEX
        if not pattern.fullmatch(piece):
            raise ValueError(f"malformed tag path {value[:200]!r}")
        path.append(int(piece, 16 if position % 2 == 0 else 10))
    return tuple(path)


def dataset_to_json(
    ds: Dataset,
    *,
    bulkdata_uri: BulkDataURIBuilder | None,
    inline_threshold: int = 1024,
    values: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """Convert ``ds`` to a DICOM JSON object (PS3.18 §F.2).

    With ``bulkdata_uri``, binary values of ``inline_threshold`` bytes or more, and pixel data of
    any size, become ``BulkDataURI`` members built from the attribute's :data:`TagPath`; without
    it every binary value is ``InlineBinary``. The file meta group is not part of ``ds``. With
    ``values``, the top-level values converted on the way are put there by tag, each as
    :func:`element_value` gives it.
    """
    return _dataset(ds, (), 0, bulkdata_uri, inline_threshold, values)


def json_bytes(value: Any) -> bytes:
    """Serialize DICOM JSON (an object or an array of them) as UTF-8 (PS3.18 §F.2.1)."""
    return orjson.dumps(value)


PixelElement = tuple[int, str | None, int]
"""The element header (tag, VR as written or None, length) of a top-level pixel data element."""


def read_header(fp: BinaryIO, *, force: bool = False) -> tuple[Dataset, list[PixelElement]]:
    """A PS3.10 file's data set read up to its top-level pixel data, and that element's header.

    Pixel data is never read (pydicom's ``stop_before_pixels`` point); what stopped the reading is
    returned for :func:`instance_json`. Raises pydicom's ``InvalidDicomError`` when ``fp`` is not
    a PS3.10 file (unless ``force``).
    """
    seen: list[PixelElement] = []

    def at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
        if tag in PIXEL_DATA_TAGS:
            seen.append((tag, vr, length))
            return True
        return False

    return read_partial(fp, stop_when=at_pixel_data, force=force), seen


def instance_json(
    ds: Dataset,
    pixel_elements: list[PixelElement],
    uri_builder: BulkDataURIBuilder,
    *,
    inline_threshold: int = 1024,
    values: dict[int, Any] | None = None,
) -> dict[str, Any]:
    """DICOM JSON of a data set read by :func:`read_header` (PS3.18 §F.2).

    The pixel data is described by a ``BulkDataURI`` from its element header alone (an empty one
    by its VR only). Elements after the pixel data are not included. ``values`` as for
    :func:`dataset_to_json`.
    """
    result = dataset_to_json(ds, bulkdata_uri=uri_builder, inline_threshold=inline_threshold, values=values)
    for tag, vr, length in pixel_elements:
        attribute: dict[str, Any] = {"vr": vr or _dictionary_vr(tag)}
        if length:
            attribute["BulkDataURI"] = uri_builder((tag,))
        result[f"{tag:08X}"] = attribute
    return dict(sorted(result.items()))


def instance_json_from_file(
    source: str | os.PathLike[str] | bytes, uri_builder: BulkDataURIBuilder, *, inline_threshold: int = 1024
) -> dict[str, Any]:
    """DICOM JSON of a PS3.10 file, reading only up to its top-level pixel data (PS3.18 §F.2).

    Raises pydicom's ``InvalidDicomError`` when ``source`` is not a PS3.10 file.
    """
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as fp:
        ds, pixel_elements = read_header(fp)
    return instance_json(ds, pixel_elements, uri_builder, inline_threshold=inline_threshold)


def _dictionary_vr(tag: int) -> str:
    """The data dictionary VR (ambiguous ones resolved to their first choice, private ones UN)."""
    try:
        vr: str = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[0] if tag not in PIXEL_DATA_TAGS else vr.split(" or ")[-1]


def _resolve_vr(element: DataElement, ds: Dataset) -> str:
    """Resolve an ambiguous VR (``OB or OW``, ``US or SS``) from its dataset (PS3.5 Annex A.1)."""
    try:
        resolved = correct_ambiguous_vr_element(copy.copy(element), ds, True).VR
    except AttributeError:  # the attributes that decide it are absent
        resolved = None
    return resolved if resolved and " or " not in resolved else _dictionary_vr(element.tag)


def _dataset(
    ds: Dataset,
    prefix: TagPath,
    depth: int,
    uri: BulkDataURIBuilder | None,
    threshold: int,
    values: dict[int, Any] | None = None,
) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise DepthError(f"sequences nested deeper than {MAX_DEPTH} levels")
    result: dict[str, Any] = {}
    # what pydicom's Dataset.__getitem__ decodes text with, looked up once per data set
    encoding = ds.original_character_set or ds._character_set
    codec = raw_json.text_codec(encoding)
    # pydicom's own tag → element dict: Dataset.keys() and get_item() cost a BaseTag each
    elements = ds._dict
    for tag in sorted(elements, key=int):
        if not tag & 0xFFFF:  # (gggg,0000) Group Length is never included (§F.2.2)
            continue
        raw = elements[tag]
        converted = raw_json.convert(raw, codec) if isinstance(raw, RawDataElement) else None
        if converted is None:
            attribute = _attribute(ds, tag, (*prefix, tag), depth, uri, threshold, encoding, values)
        else:
            attribute = _converted(converted, (*prefix, tag), uri, threshold)
            if values is not None and converted.value is not raw_json.NO_VALUE:
                values[tag] = converted.value
        result[f"{tag:08X}"] = attribute
    return result


def _converted(
    converted: raw_json.Converted, path: TagPath, uri: BulkDataURIBuilder | None, threshold: int
) -> dict[str, Any]:
    """The JSON attribute of a value :mod:`.raw_json` converted."""
    attribute: dict[str, Any] = {"vr": converted.vr}
    if converted.binary is not None:
        _binary(attribute, converted.binary, path, uri, threshold)
    elif converted.items is not None:
        attribute["Value"] = converted.items
    return attribute


def _binary(
    attribute: dict[str, Any], value: bytes, path: TagPath, uri: BulkDataURIBuilder | None, threshold: int
) -> None:
    """A binary value by reference when large (or pixel data), else inline (§F.2.6, §F.2.7)."""
    if uri is not None and (path[-1] in PIXEL_DATA_TAGS or len(value) >= threshold):
        attribute["BulkDataURI"] = uri(path)
    else:
        attribute["InlineBinary"] = base64.b64encode(value).decode("ascii")


def _direct(raw: RawDataElement, encoding: str | MutableSequence[str]) -> tuple[str, Any] | None:
    """(VR, value) of a raw element converted as pydicom would, without making a DataElement
    and storing it in the data set (most of the cost); None when pydicom needs the data set's
    context (sequence, UN or ambiguous VR, private implicit VR, LUT descriptor) or fails."""
    vr = raw.VR
    if vr is None and not raw.tag.is_private:  # implicit VR: the dictionary's, when unambiguous
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            return None
    if vr not in _DIRECT_VRS or raw.tag in raw_json.LUT_DESCRIPTORS or (raw.value is None and raw.length):
        return None
    try:
        return vr, convert_value(vr, raw, encoding)
    except Exception:  # pydicom raises many types; its own path then reports the failure
        return None


def element_value(ds: Dataset, tag: int) -> Any:
    """``ds[tag].value`` as pydicom gives it (``tag`` must be in ``ds``), converted straight from
    the raw bytes when :mod:`.raw_json` or :func:`_direct` can (no DataElement made and stored)."""
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement):
        encoding = ds.original_character_set or ds._character_set
        converted = raw_json.convert(raw, raw_json.text_codec(encoding))
        if converted is not None and converted.value is not raw_json.NO_VALUE:
            return converted.value
        direct = _direct(raw, encoding)
        if direct is not None:
            return direct[1]
    return ds[tag].value


def _attribute(
    ds: Dataset,
    tag: int,
    path: TagPath,
    depth: int,
    uri: BulkDataURIBuilder | None,
    threshold: int,
    encoding: str | MutableSequence[str],
    values: dict[int, Any] | None,
) -> dict[str, Any]:
    raw = ds.get_item(tag)
    direct = _direct(raw, encoding) if isinstance(raw, RawDataElement) else None
    if direct is None and isinstance(raw, RawDataElement) and (raw.VR or _dictionary_vr(tag)) in ("IS", "DS"):
        # Read IS/DS text ourselves: pydicom refuses invalid numbers, which must pass as strings.
        vr = raw.VR or _dictionary_vr(tag)
        text = (raw.value or b"").decode("latin-1").strip(" \x00")  # pydicom's default encoding
        value = text.split("\\") if text else None
    else:
        vr, value = direct if direct is not None else _element(ds, tag)
        if values is not None:
            values[tag] = value
    attribute: dict[str, Any] = {"vr": vr}
    if value is None or (not isinstance(value, int | float) and len(value) == 0):
        return attribute
    if vr in BINARY_VRS:
        _binary(attribute, value, path, uri, threshold)
        return attribute
    if vr == "SQ":
        attribute["Value"] = [
            _dataset(item, (*path, index), depth + 1, uri, threshold) for index, item in enumerate(value)
        ]
    else:
        items = value if isinstance(value, MultiValue | list | tuple) else [value]
        attribute["Value"] = [_value(vr, item) for item in items]
    return attribute


def _element(ds: Dataset, tag: int) -> tuple[str, Any]:
    """(VR, value) of an element through pydicom's own conversion (stored in ``ds``)."""
    element = ds[tag]
    return element.VR if " or " not in element.VR else _resolve_vr(element, ds), element.value


def _value(vr: str, item: Any) -> Any:
    """One value of a non-binary, non-SQ attribute in its JSON type (PS3.18 §F.2.3)."""
    if item is None or item == "":
        return None
    if vr == "PN":
        groups = str(item).split("=") if not isinstance(item, PersonName) else item.components
        return raw_json.person_name(groups)
    if vr == "AT":
        return f"{int(item):08X}"
    if vr in ("IS", "DS"):
        return _number_string(vr, str(item).strip())
    if vr in _INTEGER_VRS:
        return int(item)
    if vr in _FLOAT_VRS:
        return float(item) if math.isfinite(item) else None
    if vr in _BIG_INTEGER_VRS:
        return int(item) if abs(item) <= raw_json.JS_SAFE_INTEGER else str(item)
    return str(item)


def _number_string(vr: str, text: str) -> int | float | str | None:
    """IS/DS text as a JSON number when valid (PS3.5 Table 6.2-1), else the text itself."""
    if not text:
        return None
    if vr == "IS":
        return int(text) if _IS.fullmatch(text) and -(2**31) <= int(text) < 2**31 else text
    if len(text) > 16 or not _DS.fullmatch(text):
        return text
    if _INTEGER.fullmatch(text):
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else text
