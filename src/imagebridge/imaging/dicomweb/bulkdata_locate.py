"""Finding one attribute's value in a stored PS3.10 file without reading the file (PS3.5 §7).

A BulkDataURI names its attribute by tag path (``dicom_json.tag_path_string``). This walks
the data element headers of the stored blob (PS3.5 §7.1 explicit and implicit VR encodings,
§7.5 sequences and items of defined and undefined length) through ranged reads of the blob
store, skipping values it does not need, so locating a value costs a few small reads whatever
the file size, on a local folder and on object storage alike. Every step moves forward and is
checked against the blob size: a malformed file cannot make it loop or read out of bounds.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR

from imagebridge.imaging.archive.blobs import BlobStore
from imagebridge.imaging.dicomweb.dicom_json import MAX_DEPTH, TagPath

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99"})
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: PS3.5 Table 7.1-1: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_WINDOW = 64 * 1024


class Unlocatable(ValueError):
    """The file does not hold the attribute, or cannot be walked to it."""


@dataclass(frozen=True)
class Located:
    """Where a value lies in the blob: ``length`` bytes from ``offset``."""

    offset: int
    length: int
    vr: str
    encapsulated: bool = False  # undefined-length pixel data (fragments in items, PS3.5 §A.4)


class BlobReader:
    """Random access to a blob through the store's ranged streams, one window at a time."""

    def __init__(self, blobs: BlobStore, key: str, size: int) -> None:
        self.blobs, self.key, self.size = blobs, key, size
        self._start, self._data = 0, b""

    async def read(self, position: int, count: int) -> bytes:
        if position < 0 or position + count > self.size:
            raise Unlocatable("a data element runs past the end of the file")
        end = self._start + len(self._data)
        if not (self._start <= position and position + count <= end):
            self._start = position
            stop = min(self.size, position + max(count, _WINDOW))
            self._data = b"".join([chunk async for chunk in self.blobs.open(self.key, position, stop)])
        offset = position - self._start
        data = self._data[offset : offset + count]
        if len(data) != count:
            raise Unlocatable("the stored file is shorter than its index entry")
        return data


@dataclass(frozen=True)
class _Header:
    tag: int
    vr: str
    length: int
    value: int  # position of the value


class _Walker:
    def __init__(self, reader: BlobReader, big_endian: bool) -> None:
        self.reader = reader
        self.endian = ">" if big_endian else "<"

    async def header(self, position: int, implicit: bool) -> _Header:
        raw = await self.reader.read(position, 8)
        group, element = struct.unpack(self.endian + "HH", raw[:4])
        tag = group << 16 | element
        if group == 0xFFFE or implicit:
            (length,) = struct.unpack(self.endian + "I", raw[4:])
            return _Header(tag, "" if group == 0xFFFE else _vr(tag), length, position + 8)
        vr = raw[4:6].decode("latin-1")
        if vr in _LONG_VRS:
            (length,) = struct.unpack(self.endian + "I", await self.reader.read(position + 8, 4))
            return _Header(tag, vr, length, position + 12)
        (length,) = struct.unpack(self.endian + "H", raw[6:])
        return _Header(tag, vr, length, position + 8)

    async def find(
        self, path: TagPath, position: int, end: int | None, implicit: bool, depth: int
    ) -> Located:
        """Find ``path`` in the dataset from ``position`` to ``end`` (None: to an item delimiter)."""
        if depth > MAX_DEPTH:
            raise Unlocatable("sequences nested too deeply")
        target = path[0]
        while end is None or position < end:
            header = await self.header(position, implicit)
            if header.tag in (ITEM_END, SEQUENCE_END) or header.tag > target:
                break  # elements are in ascending tag order (PS3.5 §7.1)
            if header.tag == target:
                if len(path) == 1:
                    encapsulated = header.length == UNDEFINED
                    if not encapsulated and header.value + header.length > self.reader.size:
                        raise Unlocatable("the value runs past the end of the file")
                    return Located(header.value, header.length, header.vr, encapsulated)
                return await self._item(header, path, implicit, depth)
            position = await self.skip(header, implicit, depth)
        raise Unlocatable("no such attribute")

    async def _item(self, sequence: _Header, path: TagPath, implicit: bool, depth: int) -> Located:
        """Descend into item ``path[1]`` of ``sequence`` and find ``path[2:]`` there."""
        inner_implicit = implicit or sequence.vr == "UN"  # PS3.5 §6.2.2: UN sequences are implicit
        end = None if sequence.length == UNDEFINED else sequence.value + sequence.length
        position, index = sequence.value, 0
        while end is None or position < end:
            item = await self.header(position, True)
            if item.tag != ITEM:
                break
            item_end = None if item.length == UNDEFINED else item.value + item.length
            if index == path[1]:
                return await self.find(path[2:], item.value, item_end, inner_implicit, depth + 1)
            position = (
                item_end
                if item_end is not None
                else await self._skip_dataset(item.value, inner_implicit, depth + 1)
            )
            index += 1
        raise Unlocatable("no such sequence item")

    async def skip(self, header: _Header, implicit: bool, depth: int) -> int:
        """The position after the element whose header is ``header``."""
        if header.length != UNDEFINED:
            return header.value + header.length
        # a sequence, an implicit-VR UN sequence, or encapsulated pixel data: items to a delimiter
        inner_implicit = implicit or header.vr == "UN"
        position = header.value
        while True:
            item = await self.header(position, True)
            if item.tag == SEQUENCE_END:
                return item.value
            if item.tag != ITEM:
                raise Unlocatable("malformed sequence")
            position = (
                item.value + item.length
                if item.length != UNDEFINED
                else await self._skip_dataset(item.value, inner_implicit, depth + 1)
            )

    async def _skip_dataset(self, position: int, implicit: bool, depth: int) -> int:
        """The position after the item delimiter ending the dataset at ``position``."""
        if depth > MAX_DEPTH:
            raise Unlocatable("sequences nested too deeply")
        while True:
            header = await self.header(position, implicit)
            if header.tag == ITEM_END:
                return header.value
            position = await self.skip(header, implicit, depth)


def _vr(tag: int) -> str:
    try:
        vr: str = dictionary_VR(tag)
    except KeyError:
        return "UN"
    return vr.split(" or ")[-1]


async def locate(reader: BlobReader, transfer_syntax: str, path: TagPath) -> Located:
    """Where the value at ``path`` lies in the PS3.10 file ``reader`` reads (PS3.10 §7.1)."""
    if transfer_syntax in DEFLATED:
        raise Unlocatable("values of deflated instances cannot be located")
    if await reader.read(128, 4) != b"DICM":
        raise Unlocatable("not a PS3.10 file")
    meta = _Walker(reader, big_endian=False)
    position = 132
    while position < reader.size:  # the File Meta Information is explicit VR little endian
        header = await meta.header(position, implicit=False)
        if header.tag >> 16 != 0x0002:
            break
        position = await meta.skip(header, False, 0)
    walker = _Walker(reader, big_endian=transfer_syntax == EXPLICIT_VR_BIG_ENDIAN)
    return await walker.find(path, position, reader.size, transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, 0)
