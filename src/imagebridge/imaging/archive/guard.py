"""A structural pre-scan of a PS3.10 file, before pydicom reads it (PS3.10 §7, PS3.5 §7.1, §7.5).

pydicom trusts declared lengths (it allocates what a header says), recurses once per sequence
level and inflates Deflated Explicit VR Little Endian with an unbounded ``zlib.decompress``.
This scanner walks the element structure without reading values, so that a file reaches pydicom
only when:

- every declared length fits inside its container and the file (security.md DI-01, DI-02);
- sequences nest at most :data:`MAX_SEQUENCE_DEPTH` deep (DI-03);
- the transfer syntax is one pydicom knows, with explicit VRs that are real VRs (DI-07);
- a deflated data set inflates to at most ``max_inflated_bytes`` (DI-08, streaming inflate).

Cost is linear in the number of elements; values (pixel data included) are skipped by seeking.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.values import convert_UI

#: Deepest sequence nesting accepted; real objects stay far below, pydicom fails near 250.
MAX_SEQUENCE_DEPTH = 32
UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
#: PS3.5 Table 7.1-1: explicit VRs with a 4-byte length after two reserved bytes.
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST"}
    | {"TM", "UI", "UL", "US"}
)
_INFLATE_CHUNK = 1024 * 1024


class Malformed(ValueError):
    """The file is not a structurally sound PS3.10 file; ``unsupported_syntax`` tells why."""

    def __init__(self, message: str, *, unsupported_syntax: bool = False) -> None:
        super().__init__(message)
        self.unsupported_syntax = unsupported_syntax


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, little: bool) -> None:
        self.fh = fh
        self.size = size
        self.pos = fh.tell()
        self.order = "<" if little else ">"

    def read(self, n: int) -> bytes:
        data = self.fh.read(n)
        if len(data) != n:
            raise Malformed(f"the file ends inside an element header at byte {self.pos}")
        self.pos += n
        return data

    def skip(self, n: int, end: int) -> None:
        if n > end - self.pos:
            raise Malformed(
                f"an element declares {n} bytes at byte {self.pos}, more than its container holds"
            )
        self.fh.seek(n, os.SEEK_CUR)
        self.pos += n

    def tag(self) -> int:
        group, element = struct.unpack(self.order + "HH", self.read(4))
        return int(group) << 16 | int(element)

    def u32(self) -> int:
        value: int = struct.unpack(self.order + "L", self.read(4))[0]
        return value

    def peek_item(self, length: int) -> bool:
        """Whether a value of ``length`` bytes at the current position starts with an Item tag."""
        if length < 8:
            return False
        head = self.fh.read(4)
        self.fh.seek(-len(head), os.SEEK_CUR)
        return head == b"\xfe\xff\x00\xe0"


def scan(path: Path, *, max_inflated_bytes: int) -> str:
    """Check the structure of the PS3.10 file at ``path``; return its Transfer Syntax UID.

    Raises :class:`Malformed` (with ``unsupported_syntax`` for unknown transfer syntaxes).
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(128)
        if size < 132 or fh.read(4) != b"DICM":
            raise Malformed(
                "not a DICOM PS3.10 file: no 'DICM' prefix after a 128-byte preamble and no File Meta "
                "Information at the start (a data set without it has no known transfer syntax)"
            )
        ts = _meta(_Reader(fh, size, little=True))
        if not UID(ts).is_transfer_syntax:
            raise Malformed(f"transfer syntax {ts!r} is not supported", unsupported_syntax=True)
        if ts == DeflatedExplicitVRLittleEndian:
            _scan_deflated(fh, path.parent, max_inflated_bytes)
        else:
            reader = _Reader(fh, size, little=ts != ExplicitVRBigEndian)
            _dataset(reader, size, size, 0, explicit=ts != ImplicitVRLittleEndian)
    return ts


def _meta(r: _Reader) -> str:
    """Walk the File Meta Information group (always Explicit VR Little Endian, PS3.10 §7.1)."""
    ts = ""
    while r.pos + 8 <= r.size:
        head = r.fh.read(2)
        r.fh.seek(-len(head), os.SEEK_CUR)
        if head != b"\x02\x00":
            break
        tag = r.tag()
        vr, length = _explicit_header(r)
        if length == UNDEFINED:
            raise Malformed("a file meta element has an undefined length")
        if tag == 0x00020010:
            if length > 128 or vr not in ("UI", "UN"):  # pydicom reads a UN one as UI
                raise Malformed("the Transfer Syntax UID is not a UID")
            ts = _uid(r.read(length))
        else:
            r.skip(length, r.size)
    if not ts:
        raise Malformed("the file meta information has no Transfer Syntax UID")
    return ts


def _uid(value: bytes) -> str:
    """A UI value as pydicom reads it (``convert_UI``: padding and surrounding whitespace
    dropped), so that the syntax scanned is the one pydicom reads by; "" when it holds several."""
    uid = convert_UI(value, True)
    return uid if isinstance(uid, str) else ""


def _explicit_header(r: _Reader) -> tuple[str, int]:
    raw = r.read(2)
    vr = raw.decode("ascii", "replace")
    if vr in LONG_VRS:
        r.read(2)
        return vr, r.u32()
    if vr in SHORT_VRS:
        length: int = struct.unpack(r.order + "H", r.read(2))[0]
        return vr, length
    raise Malformed(f"unknown value representation {raw!r} at byte {r.pos - 2} (wrong transfer syntax?)")


def _implicit_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _dataset(r: _Reader, end: int | None, bound: int, depth: int, *, explicit: bool) -> None:
    """Elements up to ``end`` (or up to an Item Delimitation Item, within ``bound``, when None)."""
    limit = bound if end is None else end
    while r.pos < limit:
        tag = r.tag()
        if tag == ITEM_END and end is None:
            r.u32()
            return
        if tag >> 16 == 0xFFFE:
            raise Malformed(f"unexpected delimiter ({tag:08X}) at byte {r.pos - 4}")
        if explicit:
            vr, length = _explicit_header(r)
        else:
            vr, length = _implicit_vr(tag), r.u32()
        if length == UNDEFINED:
            if tag == PIXEL_DATA:
                _fragments(r, limit)
            elif vr in ("SQ", "UN"):
                _sequence(r, None, limit, depth + 1, explicit=explicit and vr == "SQ")
            else:
                raise Malformed(f"element ({tag:08X}) has an undefined length but is not a sequence")
        elif vr == "SQ" or (vr == "UN" and r.peek_item(length)):
            if length > limit - r.pos:
                raise Malformed(f"a sequence declares {length} bytes, more than its container holds")
            _sequence(r, r.pos + length, limit, depth + 1, explicit=explicit and vr == "SQ")
        else:
            r.skip(length, limit)
    if end is None:
        raise Malformed("a sequence item has no Item Delimitation Item before its container ends")
    if r.pos != end:
        raise Malformed("an item's elements overrun its declared length")


def _sequence(r: _Reader, end: int | None, bound: int, depth: int, *, explicit: bool) -> None:
    if depth > MAX_SEQUENCE_DEPTH:
        raise Malformed(f"sequences nest deeper than {MAX_SEQUENCE_DEPTH} levels")
    limit = bound if end is None else end
    while end is None or r.pos < end:
        if r.pos >= limit:
            raise Malformed("the file ends inside a sequence")
        tag, length = r.tag(), r.u32()
        if tag == SEQUENCE_END and end is None:
            return
        if tag != ITEM:
            raise Malformed(f"expected a sequence item at byte {r.pos - 8}, found ({tag:08X})")
        if length == UNDEFINED:
            _dataset(r, None, limit, depth, explicit=explicit)
        else:
            if length > limit - r.pos:
                raise Malformed(f"an item declares {length} bytes, more than its sequence holds")
            _dataset(r, r.pos + length, limit, depth, explicit=explicit)


def _fragments(r: _Reader, limit: int) -> None:
    """Encapsulated pixel data: items of defined length up to a Sequence Delimitation Item."""
    while True:
        tag, length = r.tag(), r.u32()
        if tag == SEQUENCE_END:
            return
        if tag != ITEM or length == UNDEFINED:
            raise Malformed(f"malformed encapsulated pixel data at byte {r.pos - 8}")
        r.skip(length, limit)


def _scan_deflated(fh: BinaryIO, directory: Path, max_inflated_bytes: int) -> None:
    """Inflate the data set with a cap into a scratch file, then scan it (PS3.5 §A.5)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with tempfile.TemporaryFile(dir=directory) as scratch:
        while True:
            data = fh.read(_INFLATE_CHUNK)
            pending = data
            while True:
                try:
                    out = inflater.decompress(pending, _INFLATE_CHUNK)
                except zlib.error as exc:
                    raise Malformed(f"the deflated data set cannot be inflated: {exc}") from exc
                total += len(out)
                if total > max_inflated_bytes:
                    raise Malformed(f"the deflated data set inflates beyond {max_inflated_bytes} bytes")
                scratch.write(out)
                pending = inflater.unconsumed_tail
                if not pending:
                    break
            if not data:
                break
        scratch.write(inflater.flush())
        size = scratch.tell()
        scratch.seek(0)
        _dataset(_Reader(scratch, size, little=True), size, size, 0, explicit=True)
