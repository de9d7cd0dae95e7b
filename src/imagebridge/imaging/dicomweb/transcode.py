"""Transcoding stored instances to Explicit VR Little Endian for WADO-RS (PS3.18 §8.7.3.5.2).

"The default Transfer Syntax for DICOM Web Services [is] Explicit VR Little Endian" (§9.4.2.4):
a request naming no transfer syntax, or naming 1.2.840.10008.1.2.1, gets every instance in it.
Instances stored compressed are decompressed (pydicom + pylibjpeg / pyjpegls decoders; YBR colour
becomes RGB, Planar Configuration 0), big-endian and implicit-VR ones are re-encoded; the File Meta
Information is rewritten with the new Transfer Syntax UID; the SOP Instance UID is kept.

The re-encoded instance is streamed, never built whole: the header up to Pixel Data is re-encoded,
then the Pixel Data element goes out frame by frame (decode one frame, send it, next) — or, for
uncompressed little-endian storage, as byte ranges of the blob — then any elements after it.
Memory is bounded by one frame (the frame budget of :mod:`pixels`), whatever the instance size.
Each step runs in a worker thread under :data:`pixels.DECODERS`. Two cases are still re-encoded
whole, within :data:`pixels.MAX_INSTANCE_BYTES` (413 naming ``transfer-syntax=*`` beyond it):
Deflated data sets (the Pixel Data cannot be located without inflating everything before it) and
instances whose pixel data is not a located (7FE0,0010) element with Rows, Columns and Bits
Allocated (no pixels, float pixel data, a data set encoded otherwise than its transfer syntax).
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import parse_basic_offsets
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from imagebridge.imaging.archive.blobs import CHUNK, BlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.dicomweb import pixels
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.media import EXPLICIT_VR_LITTLE_ENDIAN

#: Largest run of elements after Pixel Data (e.g. Data Set Trailing Padding) we re-encode.
MAX_TRAILING_BYTES = 16 * 1024 * 1024
_MAX_VALUE_LENGTH = 0xFFFFFFFE  # PS3.5 §7.1.1: 32-bit lengths, 0xFFFFFFFF means undefined
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_ENCAPSULATION_ONLY = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)


def can_transcode(transfer_syntax: str) -> bool:
    """Whether an instance stored in ``transfer_syntax`` can be sent as Explicit VR Little Endian."""
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return False
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def _cannot(row: InstanceRow, exc: Exception) -> DicomwebError:
    return DicomwebError(
        406,
        f"instance {row.sop_uid} in transfer syntax {row.transfer_syntax_uid} cannot be "
        f"transcoded to {EXPLICIT_VR_LITTLE_ENDIAN} ({exc}); ask for transfer-syntax=*",
    )


def _with_new_syntax(ds: Dataset) -> Dataset:
    """A fresh data set (no memory of the original encoding) with Explicit VR LE file meta."""
    encoded = Dataset(ds)
    encoded.file_meta = FileMetaDataset(ds.file_meta)
    encoded.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
    return encoded


def _whole(blobs: BlobStore, row: InstanceRow) -> bytes:
    """The whole instance re-encoded in memory, within the transcoding limit (worker thread)."""
    with pixels.reading(blobs, row.blob_key, row.size) as fp:
        header = pixels.read_header(fp)
        if header.has_pixels:
            header.check_instance_budget()
        if row.size > pixels.MAX_INSTANCE_BYTES:
            raise DicomwebError(413, "this instance is too large to transcode; ask for transfer-syntax=*")
        fp.seek(0)
        try:
            ds = pydicom.dcmread(fp)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)
            out = io.BytesIO()
            dcmwrite(out, _with_new_syntax(ds), enforce_file_format=True)
        except DicomwebError:
            raise
        except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
            raise _cannot(row, exc) from exc
    return out.getvalue()


@dataclass
class _Pixels:
    """Where the stored Pixel Data lies and how the new one is laid out."""

    header: pixels.PixelHeader
    start: int  # file offset of the stored value
    end: int  # file offset just after the stored element (after the Sequence Delimiter if encapsulated)
    length: int  # value length of the re-encoded Pixel Data (before padding)


def _encapsulated_end(fp: io.BufferedReader, start: int) -> int:
    """File offset after the Sequence Delimitation Item of encapsulated Pixel Data (PS3.5 A.4).

    Fragments are skipped by their item headers; the Basic Offset Table, when present, lets the
    walk start at the last frame's first fragment (and is ignored if it does not point at one).
    """

    def item(at: int) -> tuple[int, int]:
        fp.seek(at)
        head = fp.read(8)
        if len(head) < 8:
            raise ValueError("the encapsulated Pixel Data ends without a Sequence Delimiter")
        tag_group, tag_element, length = struct.unpack("<HHL", head)
        return tag_group << 16 | tag_element, length

    def walk(at: int) -> int:
        while True:
            tag, length = item(at)
            if tag == _SEQUENCE_END:
                return at + 8
            if tag != _ITEM or length == 0xFFFFFFFF:
                raise ValueError(f"malformed encapsulated Pixel Data at byte {at}")
            at += 8 + length

    tag, length = item(start)
    if tag != _ITEM:
        raise ValueError("the encapsulated Pixel Data does not start with the Basic Offset Table")
    fragments = start + 8 + length
    fp.seek(start)
    offsets = parse_basic_offsets(fp) if length else []
    if offsets:
        try:
            return walk(fragments + offsets[-1])
        except ValueError:
            pass  # a Basic Offset Table that does not point at fragments: walk them all
    return walk(fragments)


def _locate(fp: io.BufferedReader, header: pixels.PixelHeader) -> _Pixels:
    ts = header.transfer_syntax
    start = header.value_offset
    assert start is not None
    if header.value_length is None:  # encapsulated
        try:
            end = _encapsulated_end(fp, start)
        except ValueError as exc:
            raise DicomwebError(406, f"the stored encapsulated Pixel Data is malformed ({exc})") from exc
    else:
        end = start + header.value_length
    if ts.is_compressed or not ts.is_little_endian:
        header.check_frame_budget()
        if header.bits_allocated == 1:
            length = (header.frames * header.frame_samples + 7) // 8
        else:
            length = header.frames * header.native_frame_bytes
    else:
        length = end - start  # little-endian native: the stored bytes are already right
    if length > _MAX_VALUE_LENGTH:
        raise DicomwebError(
            413,
            f"the decoded Pixel Data would be {length} bytes, beyond a DICOM value length; "
            "ask for transfer-syntax=*",
        )
    return _Pixels(header, start, end, length)


def _trailing(fp: io.BufferedReader, where: _Pixels, size: int) -> bytes:
    """Elements after Pixel Data (signatures, padding…) re-encoded in Explicit VR Little Endian."""
    if where.end >= size:
        return b""
    if size - where.end > MAX_TRAILING_BYTES:
        raise DicomwebError(413, "too much data after Pixel Data to transcode; ask for transfer-syntax=*")
    ts = where.header.transfer_syntax
    fp.seek(where.end)
    tail = read_dataset(fp, is_implicit_VR=ts.is_implicit_VR, is_little_endian=ts.is_little_endian)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, tail)
    return out.getvalue()


def _pixel_element_header(vr: str, length: int) -> bytes:
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, vr.encode(), 0, length + length % 2)


class _BitPacker:
    """Native 1-bit frames packed across frame boundaries (PS3.5 §8.1.1: bits run on)."""

    def __init__(self) -> None:
        self._carry = np.zeros(0, dtype=np.uint8)

    def pack(self, frame: np.ndarray) -> bytes:
        bits = np.concatenate([self._carry, frame.ravel().astype(np.uint8) & 1])
        whole = len(bits) - len(bits) % 8
        self._carry = bits[whole:]
        return np.packbits(bits[:whole], bitorder="little").tobytes()

    def flush(self) -> bytes:
        return np.packbits(self._carry, bitorder="little").tobytes() if len(self._carry) else b""


def _frames(
    fp: io.BufferedReader, where: _Pixels, row: InstanceRow
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Decoded frames with the Image Pixel attributes they came out with (RGB, planar 0…)."""
    header = where.header
    fp.seek(where.start)
    try:
        yield from get_decoder(header.transfer_syntax).iter_array(fp, **header.decode_options)
    except DicomwebError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        raise _cannot(row, exc) from exc


def _header_bytes(header: pixels.PixelHeader, properties: dict[str, Any]) -> bytes:
    """File Meta Information and every element before Pixel Data, in Explicit VR Little Endian."""
    ds = _with_new_syntax(header.dataset)
    for tag in _ENCAPSULATION_ONLY:
        if tag in ds:
            del ds[tag]
    if "photometric_interpretation" in properties:
        ds.PhotometricInterpretation = properties["photometric_interpretation"]
    if header.samples > 1 and "planar_configuration" in properties:
        ds.PlanarConfiguration = properties["planar_configuration"]
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _streamed(blobs: BlobStore, row: InstanceRow) -> Iterator[bytes]:
    """The instance in Explicit VR Little Endian, chunk by chunk (a generator: worker threads only).

    Everything that can fail cleanly (parsing, budgets, the first frame) happens before the first
    chunk is yielded; see :func:`start`.
    """
    with pixels.reading(blobs, row.blob_key, row.size) as fp:
        header = pixels.read_header(fp)
        ts = header.transfer_syntax
        streamable = header.has_pixels and not ts.is_deflated and header.value_offset is not None
        stored_vr = _stored_vr(header) if streamable else None
        if stored_vr is None:
            yield _whole(blobs, row)
            return
        where = _locate(fp, header)
        # native data keeps its VR; decompressed data is OB up to 8 bits, else OW (as pydicom's decompress)
        by_bits = "OB" if header.bits_allocated <= 8 else "OW"
        vr = by_bits if ts.is_compressed or not stored_vr else stored_vr
        tail = _trailing(fp, where, row.size)
        if not ts.is_compressed and ts.is_little_endian:  # implicit VR little endian: copy the pixels
            yield _header_bytes(header, {}) + _pixel_element_header(vr, where.length)
            yield from _blob_range(blobs, row, where.start, where.end)
            yield b"\0" * (where.length % 2) + tail
            return
        frames = _frames(fp, where, row)
        first = next(frames, None)
        if first is None:
            raise _cannot(row, ValueError("no frame could be decoded"))
        packer = _BitPacker() if header.bits_allocated == 1 else None
        yield _header_bytes(header, first[1]) + _pixel_element_header(vr, where.length)
        sent = 0
        for frame, _ in itertools.chain([first], frames):
            data = packer.pack(frame) if packer else pixels.native_bytes(frame, header.bits_allocated)
            if packer is None and len(data) != header.native_frame_bytes:
                raise _cannot(
                    row, ValueError(f"a decoded frame has {len(data)} bytes, not {header.native_frame_bytes}")
                )
            sent += len(data)
            yield data
        if packer:
            data = packer.flush()
            sent += len(data)
            yield data
        if sent != where.length:
            raise _cannot(row, ValueError(f"{sent} bytes of pixel data decoded, {where.length} declared"))
        yield b"\0" * (where.length % 2) + tail


def _stored_vr(header: pixels.PixelHeader) -> str | None:
    """The VR of the located element if it is (7FE0,0010) Pixel Data (``""`` for implicit VR), else
    None (Float Pixel Data: re-encoded whole, as is a data set whose encoding differs from its
    transfer syntax, which :func:`pixels.read_header` does not locate)."""
    if header.keyword != "PixelData":
        return None
    if header.transfer_syntax.is_implicit_VR:
        return ""
    return header.vr if header.vr in ("OB", "OW") else None


def _blob_range(blobs: BlobStore, row: InstanceRow, start: int, end: int) -> Iterator[bytes]:
    with pixels.reading(blobs, row.blob_key, row.size) as fp:
        fp.seek(start)
        while start < end:
            data = fp.read(min(CHUNK, end - start))
            if not data:
                raise DicomwebError(406, "the stored Pixel Data is shorter than its header declares")
            start += len(data)
            yield data


@dataclass
class Transcoding:
    """One instance being re-encoded: its chunk generator, advanced one step per worker call."""

    chunks: Iterator[bytes]

    async def stream(self) -> AsyncIterator[bytes]:
        while (chunk := await pixels.in_worker(next, self.chunks, None)) is not None:
            if chunk:
                yield chunk


async def start(blobs: BlobStore, row: InstanceRow) -> Transcoding:
    """Begin transcoding ``row``: its first chunk is computed now, so that a failure in parsing,
    a budget or the first frame is a clean 4xx before any response byte; later failures end the
    stream early (the multipart body then lacks its closing delimiter)."""
    chunks = _streamed(blobs, row)
    first = await pixels.in_worker(next, chunks, None)
    return Transcoding(itertools.chain([] if first is None else [first], chunks))


async def explicit_little_endian_stream(blobs: BlobStore, row: InstanceRow) -> AsyncIterator[bytes]:
    """Stream ``row`` in Explicit VR Little Endian: stored bytes when already so, else transcoded."""
    if row.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN:
        async for chunk in blobs.open(row.blob_key):
            yield chunk
        return
    async for chunk in (await start(blobs, row)).stream():
        yield chunk
