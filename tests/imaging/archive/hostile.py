"""Hostile PS3.10 files for the bad-input cases of security.md §4 (DI-01..DI-10), built as raw bytes."""

from __future__ import annotations

import socket
import struct
import warnings
import zlib
from urllib.parse import urlsplit

from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import instance, part10

PREAMBLE = bytes(128) + b"DICM"


def element(group: int, elem: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element (PS3.5 §7.1.2)."""
    size = len(value) if length is None else length
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return struct.pack("<HH", group, elem) + vr.encode() + b"\0\0" + struct.pack("<L", size) + value
    return struct.pack("<HH", group, elem) + vr.encode() + struct.pack("<H", size) + value


def _even(text: str) -> bytes:
    data = text.encode()
    return data + (b"\0" if len(data) % 2 else b"")


def meta(transfer_syntax: str, sop_uid: str, extra: bytes = b"") -> bytes:
    body = (
        element(2, 0x0001, "OB", b"\0\1")
        + element(2, 0x0002, "UI", _even("1.2.840.10008.5.1.4.1.1.2"))
        + element(2, 0x0003, "UI", _even(sop_uid))
        + element(2, 0x0010, "UI", _even(transfer_syntax))
        + extra
    )
    return PREAMBLE + element(2, 0x0000, "UL", struct.pack("<L", len(body))) + body


def header(sop_uid: str, study_uid: str | None = None) -> bytes:
    """The required attributes of a small CT instance, without pixel data."""
    return (
        element(0x0008, 0x0016, "UI", _even("1.2.840.10008.5.1.4.1.1.2"))
        + element(0x0008, 0x0018, "UI", _even(sop_uid))
        + element(0x0010, 0x0020, "LO", _even("MRN-ARCHIVE-1"))
        + element(0x0020, 0x000D, "UI", _even(study_uid or generate_uid()))
        + element(0x0020, 0x000E, "UI", _even(generate_uid()))
    )


def huge_length(in_meta: bool = False) -> bytes:
    """DI-02: a private OB declaring ~4 GB (or 1 768 444 706 bytes in the file meta) in a 1 KB file."""
    sop = generate_uid()
    if in_meta:
        return meta("1.2.840.10008.1.2.1", sop, element(2, 0x0102, "OB", b"", 1768444706)) + bytes(1000)
    body = (
        header(sop)
        + element(0x0009, 0x0010, "LO", _even("HOSTILE"))
        + element(0x0009, 0x1000, "OB", b"", 0xFFFFFFF0)
    )
    return meta("1.2.840.10008.1.2.1", sop) + body + bytes(1000)


def deep_sequence(depth: int) -> bytes:
    """DI-03: ContentSequence nested ``depth`` levels, undefined lengths all the way down."""
    sop = generate_uid()
    opening = (
        element(0x0040, 0xA730, "SQ", b"", 0xFFFFFFFF) + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ) * depth
    closing = (struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)) * depth
    return meta("1.2.840.10008.1.2.1", sop) + header(sop) + opening + closing


def with_uid(value: str) -> bytes:
    """DI-05: a SOP Instance UID that is not a UID."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = instance(sop=value)
        return part10(ds)


def transfer_syntax(uid: str) -> bytes:
    """DI-07: a valid data set under an unknown or private transfer syntax."""
    sop = generate_uid()
    return meta(uid, sop) + header(sop)


def deflate_bomb(inflated: int = 300 * 1024 * 1024) -> bytes:
    """DI-08: Deflated Explicit VR Little Endian whose data set inflates to ``inflated`` bytes."""
    sop = generate_uid()
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pieces = [squeeze.compress(header(sop) + element(0x0009, 0x1000, "OB", b"", inflated))]
    zeros = bytes(1024 * 1024)
    pieces += [squeeze.compress(zeros) for _ in range(inflated // len(zeros))]
    pieces.append(squeeze.flush())
    return meta("1.2.840.10008.1.2.1.99", sop) + b"".join(pieces)


def disguised_deflate_bomb(inflated: int) -> bytes:
    """DI-08: a deflated data set that inflates to ``inflated`` bytes under a Transfer Syntax UID
    padded with a space (pydicom's UID strips it), its compressed bytes also reading as one
    Explicit VR Little Endian element (0000,FFB0) OB spanning them: a non-final stored block
    (PS3.5 §A.5, RFC 1951 §3.2.4) whose LEN/NLEN bytes and first bytes spell the element header."""
    size = 0xB000  # LEN; NLEN's high byte is "O", the first stored byte "B"
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(squeeze.compress(zeros) for _ in range(inflated // len(zeros))) + squeeze.flush()
    total = 5 + size + len(bomb)
    stored = (b"B\0\0" + struct.pack("<L", total - 12)).ljust(size, b"\0")
    data = struct.pack("<BHH", 0, size, size ^ 0xFFFF) + stored + bomb
    assert data[4:6] == b"OB"
    return meta(" 1.2.840.10008.1.2.1.99", generate_uid()) + data


def wrong_length() -> bytes:
    """Rows (US) of three bytes: pydicom raises BytesLengthException (no ValueError) for it."""
    sop = generate_uid()
    return meta("1.2.840.10008.1.2.1", sop) + header(sop) + element(0x0028, 0x0010, "US", b"abc")


def malicious_preamble() -> tuple[bytes, bytes]:
    """DI-10: an instance whose preamble is a PE header; returns (as sent, as it must be stored)."""
    clean = part10(instance())
    return b"MZ\x90\x00" + bytes(range(124)) + clean[128:], clean


def mismatched_meta() -> bytes:
    """The file meta names another SOP Instance than the data set (PS3.10 §7.1)."""
    return meta("1.2.840.10008.1.2.1", generate_uid()) + header(generate_uid())


def _raw_post(url: str, headers: dict[str, str], declared: int) -> socket.socket:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {declared}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock


def lying_content_length(url: str, headers: dict[str, str], declared: int) -> int:
    """POST with a ``Content-Length`` of ``declared`` and no body; the status code (DI-14)."""
    with _raw_post(url, headers, declared) as sock:
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


def drop_mid_body(url: str, headers: dict[str, str], body: bytes) -> None:
    """Send the first half of ``body`` (declaring all of it), then disconnect (FT-11)."""
    with _raw_post(url, headers, len(body)) as sock:
        sock.sendall(body[: len(body) // 2])
