"""DICOM JSON values read straight from an element's bytes (PS3.5 §6.2, PS3.18 §F.2.3).

Making an instance's metadata at STOW-RS is mostly value conversion. The common value
representations of a little-endian data set are converted here, without pydicom's converters,
to exactly what :mod:`.dicom_json` makes of the values pydicom would give (the tests compare
both on every sample file). Anything else returns None and is left to pydicom: sequences, UN,
IS/DS, ambiguous or unknown VRs, big-endian data, lengths that are no multiple of the value
size, ISO 2022 escapes, a character set outside :data:`TEXT_CODECS`, or bytes it cannot decode.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

#: Python codecs (as pydicom names them for (0008,0005) Specific Character Set) in which a byte
#: below 0x80 is always the ASCII character: backslash and ``=`` split values and name groups.
TEXT_CODECS = frozenset(
    {"iso8859", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso_ir_126", "iso_ir_127"}
    | {"iso_ir_138", "iso_ir_144", "iso_ir_148", "iso_ir_166", "UTF8"}
)
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
#: pydicom decodes these with its default encoding, whatever the character set (PS3.5 §6.1.2.3).
_DEFAULT_REPERTOIRE = frozenset({"AS", "CS", "DA", "DT", "TM"})
_MULTI_TEXT = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT = frozenset({"ST", "LT", "UT"})
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_NUMBER_SIZES = {vr: struct.calcsize("<" + fmt) for vr, fmt in _NUMBERS.items()}
#: Largest integer a JSON number holds exactly (PS3.18 §F.2.3: larger SV/UV values are strings).
JS_SAFE_INTEGER = 2**53 - 1
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_ESC = 0x1B
#: (0028,xxxx) LUT Descriptors, whose first value pydicom corrects from the data set's context.
LUT_DESCRIPTORS = frozenset({0x00281101, 0x00281102, 0x00281103, 0x00283002})
#: No single value for :attr:`Converted.value` (several, none, or not pydicom's type).
NO_VALUE: Any = object()


class Converted:
    """An attribute converted from its bytes: its VR, its JSON ``Value`` items (None when it has
    none), the bytes of a binary VR, and the value pydicom would give when that is one ``str``,
    ``int`` or ``float`` (else :data:`NO_VALUE`); a UI value is the plain ``str`` pydicom's
    ``UID`` equals."""

    __slots__ = ("binary", "items", "value", "vr")

    def __init__(self, vr: str, items: list[Any] | None, binary: bytes | None = None, value: Any = NO_VALUE):
        self.vr = vr
        self.items = items
        self.binary = binary
        self.value = value


def text_codec(encoding: str | list[str] | Any) -> str | None:
    """The one codec text values of a data set with ``encoding`` (pydicom's encodings for its
    character set) are decoded with, or None when it is not one of :data:`TEXT_CODECS`."""
    if isinstance(encoding, str):
        codec = encoding
    elif len(encoding) == 1:
        codec = encoding[0]
    else:
        return None
    return codec if codec in TEXT_CODECS else None


@functools.lru_cache(maxsize=8192)
def dictionary_vr(tag: int) -> str | None:
    """The data dictionary's VR of a public tag (pydicom's ``dictionary_VR``, repeating groups
    included), or None when it has none; remembered for the tags seen most."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def convert(raw: RawDataElement, codec: str | None) -> Converted | None:
    """``raw`` converted (``codec`` from :func:`text_codec`), or None: pydicom's to convert."""
    if not raw.is_little_endian or raw.tag in LUT_DESCRIPTORS or config.datetime_conversion:
        return None
    vr = raw.VR
    if vr is None:  # implicit VR: the dictionary's, when it has one unambiguous VR for the tag
        vr = None if raw.tag >> 16 & 1 else dictionary_vr(raw.tag)
        if vr is None:
            return None
    data = raw.value
    if raw.length == 0xFFFFFFFF or data is None or len(data) != raw.length:
        return None
    if not data:
        return Converted(vr, None) if vr in _CONVERTERS or vr in BINARY_VRS else None
    if vr in BINARY_VRS:
        return Converted(vr, None, data)
    converter = _CONVERTERS.get(vr)
    return None if converter is None else converter(vr, data, codec)


def _strings(vr: str, items: list[str]) -> Converted:
    """A string VR's JSON items (PS3.18 §F.2.5: an empty one of several is null)."""
    if len(items) == 1:
        return Converted(vr, [items[0]], value=items[0]) if items[0] else Converted(vr, None)
    return Converted(vr, [item or None for item in items])


def _decoded(data: bytes, codec: str | None) -> str | None:
    if codec is None or _ESC in data:
        return None
    try:
        return data.decode(codec)
    except UnicodeDecodeError:  # pydicom decodes with replacement characters and warns
        return None


def _ae(vr: str, data: bytes, codec: str | None) -> Converted:
    return _strings(vr, [item.strip() for item in data.decode("latin-1").split("\\")])


def _default_repertoire(vr: str, data: bytes, codec: str | None) -> Converted:
    return _strings(vr, data.decode("latin-1").rstrip(" \x00").split("\\"))


def _ui(vr: str, data: bytes, codec: str | None) -> Converted:
    """pydicom's UID strips each value of whitespace."""
    return _strings(vr, [item.strip() for item in data.decode("latin-1").rstrip(" \x00").split("\\")])


def _ur(vr: str, data: bytes, codec: str | None) -> Converted:
    return _strings(vr, [data.decode("latin-1").rstrip()])


def _multi_text(vr: str, data: bytes, codec: str | None) -> Converted | None:
    text = _decoded(data, codec)
    return None if text is None else _strings(vr, [item.rstrip("\0 ") for item in text.split("\\")])


def _single_text(vr: str, data: bytes, codec: str | None) -> Converted | None:
    text = _decoded(data, codec)
    return None if text is None else _strings(vr, [text.rstrip("\0 ")])


def _pn(vr: str, data: bytes, codec: str | None) -> Converted | None:
    """Person names as component group objects (PS3.18 §F.2.2); trailing empty groups are
    dropped as pydicom drops them (a name of only ``=`` is empty)."""
    text = _decoded(data.rstrip(b"\x00 "), codec)
    if text is None:
        return None
    names = []
    for name in text.split("\\"):
        groups = name.split("=")
        while groups and not groups[-1]:
            groups.pop()
        names.append(groups)
    if len(names) == 1 and not names[0]:
        return Converted(vr, None)
    return Converted(vr, [person_name(groups) for groups in names])


def person_name(groups: Sequence[str]) -> dict[str, str] | None:
    """A PN value's component groups as the JSON object of PS3.18 §F.2.2 (empty groups left out;
    None when all are)."""
    named = {name: group for name, group in zip(_PN_GROUPS, groups, strict=False) if group}
    return named or None


def _numbers(vr: str, data: bytes, codec: str | None) -> Converted | None:
    size = _NUMBER_SIZES[vr]
    if len(data) % size:
        return None  # pydicom then tries other VRs
    numbers = struct.unpack(f"<{len(data) // size}{_NUMBERS[vr]}", data)
    if vr in ("FL", "FD"):
        items: list[Any] = [number if math.isfinite(number) else None for number in numbers]
    elif vr in ("SV", "UV"):
        items = [number if abs(number) <= JS_SAFE_INTEGER else str(number) for number in numbers]
    else:
        items = list(numbers)
    single = len(numbers) == 1 and items[0] == numbers[0]  # not NaN or infinite
    return Converted(vr, items, value=numbers[0] if single else NO_VALUE)


def _at(vr: str, data: bytes, codec: str | None) -> Converted | None:
    if len(data) % 4:
        return None
    halves = struct.unpack(f"<{len(data) // 2}H", data)
    return Converted(
        vr, [f"{group:04X}{element:04X}" for group, element in zip(halves[::2], halves[1::2], strict=True)]
    )


_CONVERTERS = {
    "AE": _ae,
    "UI": _ui,
    "UR": _ur,
    "PN": _pn,
    "AT": _at,
    **dict.fromkeys(_DEFAULT_REPERTOIRE, _default_repertoire),
    **dict.fromkeys(_MULTI_TEXT, _multi_text),
    **dict.fromkeys(_SINGLE_TEXT, _single_text),
    **dict.fromkeys(_NUMBERS, _numbers),
}
