"""WADO-RS frame retrieval: ``…/instances/{instance}/frames/{list}`` (PS3.18 §10.4.1.1.3, §8.7.3.5).

The response is ``multipart/related`` with one part per requested frame, in request order:

* ``application/octet-stream`` (Explicit VR Little Endian, Table 8.7.3-5's default): native
  frame bytes. Uncompressed little-endian storage is answered with byte ranges straight from
  the blob store; anything else (compressed, big endian, deflated, bit-packed) is decoded one
  frame at a time in a worker thread (colour YBR converted to RGB as pydicom does).
* the compressed media type of the stored transfer syntax (``image/jpeg``, ``image/jls``,
  ``image/jp2``, ``image/jpx``, ``image/x-dicom-rle``): the stored compressed frame passes through
  unchanged. The frame's fragments are located with the Extended Offset Table, else the Basic
  Offset Table, else by scanning fragment items (pydicom.encaps); only those ranges are read.

Frame numbers are 1-based. A malformed list is 400; a frame beyond Number of Frames is 404 (the
target resource does not exist, PS3.18 Table 10.4.3-1), answered only after the gate admitted the
caller for the instance, so it reveals nothing about other patients.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagebridge.common.multipart import boundary, related_stream
from imagebridge.imaging.archive.blobs import BlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import pixels
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.header_cache import HEADERS
from imagebridge.imaging.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MULTIPART_RELATED,
    NotAcceptable,
    Offer,
    negotiate,
    pixel_media_type,
)
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import Access

T = TypeVar("T")
OCTET_STREAM = "application/octet-stream"
#: Most frames one request may name.
MAX_FRAMES_PER_REQUEST = 10000


def parse_frame_list(text: str) -> list[int]:
    """Parse ``{frames}``: comma-separated 1-based frame numbers (PS3.18 §10.4.1.1.3)."""
    items = text.split(",")
    if len(items) > MAX_FRAMES_PER_REQUEST:
        raise DicomwebError(400, f"at most {MAX_FRAMES_PER_REQUEST} frames may be requested at once")
    numbers = []
    for item in items:
        item = item.strip()
        if not item.isascii() or not item.isdigit() or len(item) > 10 or int(item) < 1:
            raise DicomwebError(400, "frame numbers are a comma-separated list of integers from 1")
        numbers.append(int(item))
    return numbers


def frame_offers(transfer_syntax: str) -> list[Offer]:
    """What frames of an instance stored in ``transfer_syntax`` can be sent as, preferred first."""
    native = Offer(MULTIPART_RELATED, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN)
    media = pixel_media_type(transfer_syntax)
    if media is None or media == OCTET_STREAM:
        return [native]
    return [Offer(MULTIPART_RELATED, media, transfer_syntax), native]


class FrameSource:
    """One instance's frames, read from the blob store in worker threads: each read opens the
    blob for that worker call alone (a local store's file is read directly, with no trip
    through the event loop per read: :func:`pixels.reading`)."""

    def __init__(self, blobs: BlobStore, row: InstanceRow) -> None:
        self.blobs = blobs
        self.row = row
        self.header: pixels.PixelHeader | None = None

    def _read(self, use: Callable[[io.BufferedReader], T]) -> T:
        """``use`` the open blob (in the calling worker thread), closed after."""
        with pixels.reading(self.blobs, self.row.blob_key, self.row.size) as fp:
            return use(fp)

    async def load_header(self) -> pixels.PixelHeader:
        """The instance's header: kept from an earlier request, else parsed in a worker thread."""
        key = self.row.blob_key
        header = HEADERS.kept(key)
        if header is None:
            header = await anyio.to_thread.run_sync(self._read, lambda fp: HEADERS.header(key, fp))
        self.header = header
        return header

    def _require_header(self) -> pixels.PixelHeader:
        if self.header is None:
            raise RuntimeError("load_header() first")
        return self.header

    def native_range(self, number: int) -> tuple[int, int]:
        """Byte range of frame ``number`` (1-based) of uncompressed little-endian pixel data."""
        header = self._require_header()
        assert header.value_offset is not None
        size = header.native_frame_bytes
        start = header.value_offset + (number - 1) * size
        if header.value_length is not None and (number * size > header.value_length):
            raise DicomwebError(406, "the stored Pixel Data is shorter than its header declares")
        return start, start + size

    async def decoded(self, number: int) -> bytes:
        """Frame ``number`` decoded to native little-endian bytes."""
        header = self._require_header()

        def work(fp: io.BufferedReader) -> bytes:
            return pixels.native_bytes(pixels.decode_frame(fp, header, number - 1), header.bits_allocated)

        return await pixels.in_worker(self._read, work)

    async def compressed(self, number: int) -> bytes:
        """Frame ``number`` exactly as stored in encapsulated Pixel Data (PS3.5 A.4)."""
        header = self._require_header()
        return await pixels.in_worker(
            self._read, lambda fp: pixels.encapsulated_frame(fp, header, number - 1)
        )


async def once(data: bytes) -> AsyncIterator[bytes]:
    """A part body of one chunk."""
    yield data


async def retrieve_frames(
    blobs: BlobStore, row: InstanceRow, frame_list: str, accept: str | None
) -> Response:
    """Answer a frames request for the instance ``row`` (already admitted by the gate)."""
    numbers = parse_frame_list(frame_list)
    try:
        offer = negotiate(accept, frame_offers(row.transfer_syntax_uid))
    except NotAcceptable as exc:
        raise DicomwebError(406, exc.detail) from exc
    source = FrameSource(blobs, row)
    header = await source.load_header()
    header.check_frame_budget()
    missing = [n for n in numbers if n > header.frames]
    if missing:
        raise DicomwebError(
            404, f"frame {missing[0]} does not exist: the instance has {header.frames} frame(s)"
        )
    if offer.related_type == OCTET_STREAM:
        if header.is_native_little_endian:
            ranges = [source.native_range(n) for n in numbers]
            bodies = [blobs.open(row.blob_key, start, end) for start, end in ranges]
        else:
            first = await source.decoded(numbers[0])
            bodies = [once(first), *(_lazy(source.decoded, n) for n in numbers[1:])]
    else:
        first = await source.compressed(numbers[0])
        bodies = [once(first), *(_lazy(source.compressed, n) for n in numbers[1:])]
    mark = boundary()

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for body in bodies:
            yield {"Content-Type": offer.part_content_type}, body

    return StreamingResponse(related_stream(parts(), mark), media_type=offer.content_type(mark))


async def _lazy(produce: Any, number: int) -> AsyncIterator[bytes]:
    yield await produce(number)


async def admitted_rows(ctx: ImagingContext, access: Access, request: Request) -> list[InstanceRow]:
    """The instances the URL names, if the gate's decision covers the study; else the one 404."""
    params = request.path_params
    study, series, instance = params["study"], params.get("series"), params.get("instance")
    if not all(v is None or is_valid_uid(v) for v in (study, series, instance)):
        raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    rows = await ctx.index.instances_of(study, series, instance)
    if not rows or not await ctx.gate.may_see_study(access, study):
        raise NotFound
    return rows


class NotFound(DicomwebError):
    """The resource is unknown or outside the authorization: the one 404 body (errors.not_found)."""

    def __init__(self) -> None:
        super().__init__(404, "not found")

    def response(self) -> Response:
        return not_found()


async def frames_endpoint(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``GET …/instances/{instance}/frames/{frames}`` (gated in routes)."""
    rows = await admitted_rows(ctx, access, request)
    return await retrieve_frames(
        ctx.blobs, rows[0], request.path_params["frames"], request.headers.get("accept")
    )
