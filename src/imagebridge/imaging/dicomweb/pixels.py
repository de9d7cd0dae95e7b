"""Shared pixel-data access for frames, rendering and transcoding (PS3.5 §8, Annex A.4).

Stored instances are read through :class:`BlobFile`, a seekable file object over the blob store
that fetches only the byte ranges pydicom asks for: parsing a header or extracting one frame of a
1 GB multi-frame instance reads kilobytes, not the instance. All pydicom work runs in worker
threads (``anyio.to_thread``) under one process-wide :data:`DECODERS` limiter, so decoding never
blocks the event loop and never runs more than a few at once.

Every decode is checked against a pixel budget before anything is allocated (security.md DI-09:
a header declaring 65535 x 65535 pixels over a few bytes of data is refused with 413, not
attempted). Pixel data that no installed codec can decode is answered 406: the stored bytes
remain available as they are (``transfer-syntax=*`` or the stored compressed media type).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from struct import unpack
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import as_pixel_options, pack_bits, pixel_array
from pydicom.uid import UID

from imagebridge.imaging.archive.blobs import BlobStore, LocalBlobStore
from imagebridge.imaging.dicomweb.errors import DicomwebError

#: Largest number of samples (rows x columns x samples per pixel) of one frame we decode.
MAX_FRAME_SAMPLES = 2**25
#: Largest decoded pixel data of a whole instance we produce when transcoding (bytes).
MAX_INSTANCE_BYTES = 256 * 1024**2
#: At most this many pydicom decodes run at once in one process.
DECODERS = anyio.CapacityLimiter(2)
_WINDOW = 64 * 1024
#: VRs a pixel data element may have in explicit VR (PS3.5 §7.1.2; UN when a writer did not know).
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"}
_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}

T = TypeVar("T")


class BlobFile(io.RawIOBase):
    """A read-only, seekable view of one blob, for pydicom running in an anyio worker thread.

    Each read fetches exactly the requested range from the blob store through the event loop
    (``anyio.from_thread.run``); wrap it in :class:`io.BufferedReader` for small reads.
    """

    def __init__(self, blobs: BlobStore, key: str, size: int) -> None:
        super().__init__()
        self._blobs = blobs
        self._key = key
        self._size = size
        self._pos = 0
        self.name = None  # pydicom records a file name; a blob has none

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._size, self._pos + len(buffer))
        if end <= self._pos:
            return 0
        data = anyio.from_thread.run(self._fetch, self._pos, end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    async def _fetch(self, start: int, end: int) -> bytes:
        return b"".join([chunk async for chunk in self._blobs.open(self._key, start, end)])


def open_blob(blobs: BlobStore, key: str, size: int) -> io.BufferedReader:
    """A buffered :class:`BlobFile` (call only from a worker thread)."""
    return io.BufferedReader(BlobFile(blobs, key, size), buffer_size=_WINDOW)


@contextmanager
def reading(blobs: BlobStore, key: str, size: int) -> Iterator[io.BufferedReader]:
    """The blob to read in this worker thread, closed on exit: a local store's file itself
    (read directly, with no trip through the event loop per read), else a :class:`BlobFile`."""
    fp = _open_local(blobs, key) if isinstance(blobs, LocalBlobStore) else open_blob(blobs, key, size)
    with fp:
        yield fp


def _open_local(blobs: LocalBlobStore, key: str) -> io.BufferedReader:
    return io.BufferedReader(io.FileIO(blobs.path(key)), buffer_size=_WINDOW)


@dataclass(frozen=True)
class PixelHeader:
    """What pixel access needs from an instance: its header and where its Pixel Data lies.

    ``value_offset`` is the file offset of the Pixel Data value (after the element header);
    ``value_length`` is None for encapsulated (undefined length) pixel data. Both are None when
    the value cannot be located by offset (deflated data set, a data set not encoded as its
    transfer syntax says, or no Pixel Data). ``keyword`` and ``vr`` name the located element
    (Pixel Data, Float or Double Float Pixel Data; ``vr`` is "" in implicit VR). The Image Pixel
    numbers are read from the data set once (a kept header answers many requests).
    """

    dataset: Dataset
    transfer_syntax: UID
    value_offset: int | None
    value_length: int | None
    keyword: str = "PixelData"
    vr: str = ""

    @cached_property
    def rows(self) -> int:
        return int(self.dataset.get("Rows", 0) or 0)

    @cached_property
    def columns(self) -> int:
        return int(self.dataset.get("Columns", 0) or 0)

    @cached_property
    def samples(self) -> int:
        return int(self.dataset.get("SamplesPerPixel", 1) or 1)

    @cached_property
    def bits_allocated(self) -> int:
        return int(self.dataset.get("BitsAllocated", 0) or 0)

    @cached_property
    def frames(self) -> int:
        try:
            return max(1, int(self.dataset.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1

    @property
    def has_pixels(self) -> bool:
        return self.rows > 0 and self.columns > 0 and self.bits_allocated > 0

    @property
    def frame_samples(self) -> int:
        return self.rows * self.columns * self.samples

    @property
    def native_frame_bytes(self) -> int:
        """Bytes of one frame in native (uncompressed) form; bit-packed frames round up."""
        return (self.frame_samples * self.bits_allocated + 7) // 8

    @property
    def is_native_little_endian(self) -> bool:
        """Pixel Data stored uncompressed, little endian, byte-aligned: frames are plain byte ranges."""
        ts = self.transfer_syntax
        return (
            ts.is_little_endian
            and not ts.is_compressed
            and not ts.is_deflated
            and self.value_offset is not None
            and self.bits_allocated % 8 == 0
        )

    @cached_property
    def decode_options(self) -> dict[str, Any]:
        """pydicom's decoding options for the located pixel value (Image Pixel module, PS3.3 C.7.6.3)."""
        options = as_pixel_options(
            self.dataset, transfer_syntax_uid=self.transfer_syntax, pixel_keyword=self.keyword
        )
        if self.vr:
            options["pixel_vr"] = self.vr
        return options

    def check_frame_budget(self) -> None:
        """413 when one frame is beyond what we decode (security.md DI-09)."""
        if not self.has_pixels:
            raise DicomwebError(404, "this instance has no pixel data")
        if self.frame_samples > MAX_FRAME_SAMPLES:
            raise DicomwebError(
                413,
                f"a frame of {self.rows} x {self.columns} x {self.samples} samples exceeds the "
                f"decoding limit of {MAX_FRAME_SAMPLES} samples",
            )

    def check_instance_budget(self) -> None:
        """413 when the decoded pixel data of the whole instance is beyond the transcoding limit."""
        self.check_frame_budget()
        total = self.native_frame_bytes * self.frames
        if total > MAX_INSTANCE_BYTES:
            raise DicomwebError(
                413,
                f"decoded pixel data of {total} bytes exceeds the transcoding limit of "
                f"{MAX_INSTANCE_BYTES} bytes; ask for transfer-syntax=*",
            )


def read_header(fp: io.BufferedReader) -> PixelHeader:
    """Parse the header of the PS3.10 file ``fp`` up to Pixel Data and locate the pixel value."""
    try:
        dataset = pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on malformed input
        raise DicomwebError(406, f"the stored instance cannot be parsed: {exc}") from exc
    ts = UID(dataset.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    if ts.is_deflated:
        return PixelHeader(dataset, ts, None, None)
    return _pixel_element(fp, dataset, ts)


def _pixel_element(fp: io.BufferedReader, dataset: Dataset, ts: UID) -> PixelHeader:
    """Read the Pixel Data element header at the current position (PS3.5 §7.1) and locate its value.

    An element that does not look encoded as the transfer syntax says (pydicom reads such a data
    set as it finds it) is left unlocated: a wrong offset would give wrong pixels.
    """
    start = fp.tell()
    order = "<" if ts.is_little_endian else ">"
    head = fp.read(12)
    unlocated = PixelHeader(dataset, ts, None, None)
    if len(head) < 8:
        return unlocated
    group, element = unpack(f"{order}HH", head[:4])
    keyword = _PIXEL_KEYWORDS.get(group << 16 | element)
    if keyword is None or (head[4:6] in _PIXEL_VRS) == ts.is_implicit_VR:
        return unlocated
    vr = ""
    if ts.is_implicit_VR:
        (length,) = unpack(f"{order}L", head[4:8])
        offset = start + 8
    else:
        if len(head) < 12:
            return unlocated
        vr = head[4:6].decode("latin-1")
        (length,) = unpack(f"{order}L", head[8:12])
        offset = start + 12
    return PixelHeader(dataset, ts, offset, None if length == 0xFFFFFFFF else length, keyword, vr)


def native_bytes(frame: np.ndarray, bits_allocated: int) -> bytes:
    """A decoded frame as native little-endian Pixel Data bytes (PS3.5 §8.1.1; bit-packed for 1)."""
    if bits_allocated == 1:
        return pack_bits(frame, pad=False)
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).tobytes()


def decode_frame(fp: io.BufferedReader, header: PixelHeader, index: int) -> np.ndarray:
    """Decode frame ``index`` (0-based) of the instance in ``fp`` (YBR colour converted to RGB).

    A located pixel value is decoded from its offset with the options of the header already
    parsed; otherwise (deflated…) pydicom reads the file again from its start.
    """
    header.check_frame_budget()
    plain = _plain_frame(fp, header, index)
    if plain is not None:
        return plain
    try:
        frame: np.ndarray
        if header.value_offset is None:
            fp.seek(0)
            frame = pixel_array(fp, index=index)
        else:
            fp.seek(header.value_offset)
            frame = get_decoder(header.transfer_syntax).as_array(fp, index=index, **header.decode_options)[0]
        return frame
    except Exception as exc:  # codecs raise anything from ValueError to RuntimeError
        raise DicomwebError(
            406,
            f"pixel data in transfer syntax {header.transfer_syntax} cannot be decoded here ({exc}); "
            "the stored representation is available",
        ) from exc


def _plain_frame(fp: io.BufferedReader, header: PixelHeader, index: int) -> np.ndarray | None:
    """Frame ``index`` of plain native Pixel Data read straight into an array, or None for pydicom.

    Plain: little endian, 8, 16 or 32 bits allocated, one sample or three interleaved (planar
    configuration 0), not YBR (which pydicom converts). Bits above Bits Stored are cleared, or
    copy the sign bit when Pixel Representation is 1 (PS3.5 §8.1.1), as pydicom does. Reading
    the frame's bytes into the array is one copy; pydicom's native decoder made three.
    """
    ds = header.dataset
    bits, bits_stored = header.bits_allocated, int(ds.get("BitsStored", header.bits_allocated) or 0)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if (
        not header.is_native_little_endian
        or header.keyword != "PixelData"
        or bits not in (8, 16, 32)
        or not 0 < bits_stored <= bits
        or not (header.samples == 1 or (header.samples == 3 and ds.get("PlanarConfiguration", 0) == 0))
        or photometric.startswith("YBR")
    ):
        return None
    assert header.value_offset is not None
    size = header.native_frame_bytes
    if header.value_length is not None and (index + 1) * size > header.value_length:
        raise DicomwebError(406, "the stored Pixel Data is shorter than its header declares")
    signed = ds.get("PixelRepresentation", 0) == 1
    frame = np.empty(header.frame_samples, dtype=np.dtype(f"<{'i' if signed else 'u'}{bits // 8}"))
    fp.seek(header.value_offset + index * size)
    if fp.readinto(frame.view(np.uint8).data) != size:
        raise DicomwebError(406, "the stored Pixel Data is shorter than its header declares")
    if bits_stored < bits:
        unused = bits - bits_stored
        if signed:
            np.left_shift(frame, unused, out=frame)
            np.right_shift(frame, unused, out=frame)  # arithmetic: the sign bit is copied
        else:
            np.bitwise_and(frame, (1 << bits_stored) - 1, out=frame)
    shape = (header.rows, header.columns, 3) if header.samples == 3 else (header.rows, header.columns)
    return frame.reshape(shape)


def encapsulated_frame(fp: io.BufferedReader, header: PixelHeader, index: int) -> bytes:
    """Frame ``index`` (0-based) exactly as stored in encapsulated Pixel Data (PS3.5 A.4), located
    with the Extended Offset Table, else the Basic Offset Table, else by its fragments."""
    if header.value_offset is None or header.value_length is not None:
        raise DicomwebError(406, "the stored Pixel Data is not encapsulated")
    ds = header.dataset
    offsets: Any = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    fp.seek(header.value_offset)
    try:
        frame: bytes = get_frame(fp, index, extended_offsets=offsets, number_of_frames=header.frames)
        return frame
    except Exception as exc:  # malformed item structure
        raise DicomwebError(406, f"the stored encapsulated Pixel Data is malformed ({exc})") from exc


async def in_worker(func: Callable[..., T], *args: object) -> T:
    """Run blocking pixel work in a worker thread under the process-wide :data:`DECODERS` limit."""
    return await anyio.to_thread.run_sync(func, *args, limiter=DECODERS)
