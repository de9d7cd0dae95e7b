"""A PS3.10 file's header read into pydicom's raw elements in one pass over its bytes
(PS3.10 §7.1, PS3.5 §7.1, §7.5).

What pydicom's ``read_partial`` stopped at the top-level pixel data makes of a little-endian
file (the same raw elements, values unconverted, the same character set, and undefined-length
sequences read as it reads them: by its ``read_sequence``, with the character set read so far),
at a fraction of the cost: other elements are cut from the bytes, not read one by one through a
file object. The file must have passed :func:`.guard.scan`: its lengths are trusted. A file
pydicom would read in a way this does not repeat gives None and is left to pydicom: big-endian,
deflated or private transfer syntaxes, Command Set elements, undefined-length top-level elements
other than sequences, a sequence pydicom reads otherwise than the guard walked it (or fails on),
a Specific Character Set that is a sequence, a data set whose first VR contradicts its transfer
syntax, or a header over :data:`MAX_HEADER` bytes.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    PrivateTransferSyntaxes,
)
from pydicom.values import convert_string

from imagebridge.imaging.archive.guard import ITEM_END, LONG_VRS, SEQUENCE_END, SHORT_VRS, UNDEFINED
from imagebridge.imaging.dicomweb.dicom_json import PIXEL_DATA_TAGS, PixelElement
from imagebridge.imaging.dicomweb.raw_json import dictionary_vr

#: Bytes read first; most headers end well before.
HEAD = 64 * 1024
#: Longest header read here; a longer one (a large value before the pixel data) is pydicom's.
MAX_HEADER = 16 * 1024 * 1024
_DATA_SET = 132  # the preamble and "DICM" (PS3.10 §7.1)
_VRS = {vr.encode(): vr for vr in LONG_VRS | SHORT_VRS}
_SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)
#: Elements by tag, as pydicom's Dataset keeps them.
_Elements = dict[BaseTag, DataElement | RawDataElement]
_EXPLICIT = struct.Struct("<HH2sH")  # PS3.5 §7.1.2: tag, VR, 16-bit length (or reserved)
_IMPLICIT = struct.Struct("<HHL")  # PS3.5 §7.1.3: tag, 32-bit length
_LENGTH = struct.Struct("<L")


class _Short(Exception):
    """The bytes read end before the header does."""


class _Unusual(Exception):
    """pydicom reads this file in a way :func:`read` does not repeat."""


def read(path: Path, transfer_syntax: str) -> tuple[FileDataset, list[PixelElement]] | None:
    """The header of the file at ``path`` (checked by the guard, which gave ``transfer_syntax``)
    as pydicom's ``read_partial`` gives it up to the top-level pixel data, and that element's
    header (:func:`.dicom_json.read_header`); None when it is pydicom's to read."""
    if transfer_syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, *PrivateTransferSyntaxes):
        return None
    implicit = transfer_syntax == ImplicitVRLittleEndian
    with path.open("rb") as fh:
        data = fh.read(HEAD)
        complete = len(data) < HEAD
        while True:
            try:
                return _header(path, data, implicit, complete)
            except _Unusual:
                return None
            except _Short:
                if complete or len(data) >= MAX_HEADER:
                    return None
                more = fh.read(MAX_HEADER - len(data))
                complete = len(data) + len(more) < MAX_HEADER
                data += more


def _header(
    path: Path, data: bytes, implicit: bool, complete: bool
) -> tuple[FileDataset, list[PixelElement]]:
    reader = _Reader(data, complete)
    meta: _Elements = {}
    pos = _DATA_SET
    while reader.has(pos, 8) and data[pos : pos + 2] == b"\x02\x00":
        element, pos = reader.element(
            *reader.head(pos, implicit=False), implicit=False, encoding=default_encoding
        )
        meta[element.tag] = element
    if not reader.has(pos, 1):
        implicit = True  # what read_partial says of a file that ends with its meta
    if reader.has(pos, 2) and data[pos : pos + 2] == b"\x00\x00":
        raise _Unusual("Command Set elements")
    if reader.has(pos, 6) and _looks_explicit(data[pos + 4 : pos + 6]) == implicit:
        raise _Unusual("the first VR contradicts the transfer syntax")  # pydicom then switches
    elements: _Elements = {}
    pixel: list[PixelElement] = []
    encoding: str | list[str] = default_encoding  # as data_element_generator keeps it
    while reader.has(pos, 1):
        tag, vr, length, start = reader.head(pos, implicit)
        if tag in PIXEL_DATA_TAGS:
            pixel.append((tag, vr, length))
            break
        element, pos = reader.element(tag, vr, length, start, implicit, encoding)
        elements[element.tag] = element
        if tag == _SPECIFIC_CHARACTER_SET and isinstance(element, RawDataElement):
            encoding = convert_encodings(convert_string(element.value or b"", True))
    return _file_dataset(path, data, meta, elements, implicit), pixel


def _looks_explicit(vr: bytes) -> bool:
    """pydicom's test of a data set's first element (two capitals where a VR would be)."""
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _file_dataset(
    path: Path, data: bytes, meta: _Elements, elements: _Elements, implicit: bool
) -> FileDataset:
    """The FileDataset ``read_partial`` builds, with its character set read as ``read_dataset``
    reads it."""
    dataset = Dataset(elements)
    encoding: str | list[str] = default_encoding
    charset = elements.get(_SPECIFIC_CHARACTER_SET)
    if isinstance(charset, DataElement):
        raise _Unusual("a Specific Character Set that is a sequence")  # pydicom fails on it
    if charset is not None:
        encoding = convert_encodings(convert_raw_data_element(charset).value)
    dataset.set_original_encoding(implicit, True, encoding)
    file_meta = FileMetaDataset(Dataset(meta))
    file_meta.set_original_encoding(False, True, default_encoding)
    ds = FileDataset(str(path), dataset, data[:128], file_meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    return ds


class _Reader:
    """Element headers and values cut from ``data`` (raises :class:`_Short` past its end unless
    it is the ``complete`` file)."""

    def __init__(self, data: bytes, complete: bool) -> None:
        self.data = data
        self.complete = complete

    def has(self, pos: int, size: int) -> bool:
        if pos + size <= len(self.data):
            return True
        if self.complete:
            return False
        raise _Short

    def head(self, pos: int, implicit: bool) -> tuple[int, str | None, int, int]:
        """(tag, VR or None, length, where the value starts) of the element at ``pos``."""
        data = self.data
        if not self.has(pos, 8):
            raise _Unusual("a truncated element")  # the guard refuses these
        if implicit:
            group, number, length = _IMPLICIT.unpack_from(data, pos)
            return group << 16 | number, None, length, pos + 8
        group, number, code, length = _EXPLICIT.unpack_from(data, pos)
        vr = _VRS.get(code)
        if vr is None:
            raise _Unusual("an unknown VR")
        if vr in LONG_VRS:
            if not self.has(pos, 12):
                raise _Unusual("a truncated element")
            return group << 16 | number, vr, _LENGTH.unpack_from(data, pos + 8)[0], pos + 12
        return group << 16 | number, vr, length, pos + 8

    def element(
        self, tag: int, vr: str | None, length: int, start: int, implicit: bool, encoding: str | list[str]
    ) -> tuple[RawDataElement | DataElement, int]:
        """The element whose :meth:`head` this is, as pydicom's ``data_element_generator``
        yields it (``encoding`` is its character set so far), and where the next one starts."""
        if length == UNDEFINED:
            vr = vr or (None if tag >> 16 & 1 else dictionary_vr(tag))
            if vr != "SQ":
                raise _Unusual("an undefined-length value that is not a sequence")
            return self.sequence(tag, start, implicit, encoding)
        following = start + length
        if not self.has(start, length):
            raise _Unusual("a truncated value")
        value = self.data[start:following] if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
        return RawDataElement(BaseTag(tag), vr, length, value, start, implicit, True), following

    def sequence(
        self, tag: int, start: int, implicit: bool, encoding: str | list[str]
    ) -> tuple[DataElement, int]:
        """The undefined-length sequence whose items start at ``start`` read by pydicom's
        ``read_sequence`` (as the generator reads it), once :meth:`sequence_end` has found its
        end in the bytes read: pydicom must end there too."""
        following = self.sequence_end(start, implicit) + 8
        fp = io.BytesIO(self.data)
        fp.seek(start)
        try:
            items = read_sequence(fp, implicit, True, UNDEFINED, encoding)
        except Exception as exc:  # pydicom raises many types; its own reading then reports it
            raise _Unusual("a sequence pydicom cannot read") from exc
        if fp.tell() != following:
            raise _Unusual("a sequence pydicom reads otherwise than the guard walked it")
        return DataElement(BaseTag(tag), "SQ", items, start, is_undefined_length=True), following

    def sequence_end(self, pos: int, implicit: bool) -> int:
        """Where the Sequence Delimitation Item of the undefined-length sequence (or encapsulated
        value) whose items start at ``pos`` is; items are walked as the guard walks them (raises
        :class:`_Short` when that is past the bytes read)."""
        while True:
            group, number, length = self.unpack(pos)
            if group << 16 | number == SEQUENCE_END:
                return pos
            pos += 8
            if length != UNDEFINED:
                pos += length
                continue
            while True:  # an undefined-length item: its elements up to the Item Delimitation Item
                group, number, _ = self.unpack(pos)
                if group << 16 | number == ITEM_END:
                    pos += 8
                    break
                _, vr, length, start = self.head(pos, implicit)
                if length == UNDEFINED:  # a UN sequence's items are implicit VR (PS3.5 §6.2.2)
                    pos = self.sequence_end(start, implicit or vr != "SQ") + 8
                else:
                    pos = start + length

    def unpack(self, pos: int) -> tuple[int, int, int]:
        """(group, element, length) of an item or delimiter at ``pos``."""
        if not self.has(pos, 8):
            raise _Unusual("a sequence without its delimiter")  # the guard refuses these
        group, number, length = _IMPLICIT.unpack_from(self.data, pos)
        return group, number, length
