"""WADO-RS retrieval of studies, series and instances (PS3.18 §10.4, §8.7.3).

The response is ``multipart/related; type="application/dicom"``, one PS3.10 instance per part,
streamed part by part from the blob store, read a few pieces ahead of the socket
(:mod:`imagebridge.common.read_ahead`): memory does not grow with study size. With
``transfer-syntax=*`` instances go out exactly as stored; with none, or Explicit VR Little Endian,
instances stored otherwise are transcoded one at a time (:mod:`transcode`); another explicit
syntax is served only if every instance is stored in it, else 406 names what is available.
Instances that go out as stored have known sizes, so the response carries a ``Content-Length``
(RFC 9112 §6.3) instead of chunked framing, and a blob whose size is not the indexed one cuts the
response off rather than sending a corrupt part.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import anyio
from starlette.responses import Response, StreamingResponse

from imagebridge.common.multipart import boundary, content_type_related, related_length, related_stream
from imagebridge.common.read_ahead import read_ahead
from imagebridge.imaging.archive.blobs import CHUNK, BlobStore, LocalBlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MULTIPART_RELATED,
    NotAcceptable,
    Offer,
    negotiate,
    parse_accept,
)
from imagebridge.imaging.dicomweb.transcode import (
    Transcoding,
    can_transcode,
    explicit_little_endian_stream,
    start,
)

DICOM = "application/dicom"
#: Pieces (part headers and blob chunks of up to 1 MiB) read ahead of the caller's socket.
READ_AHEAD = 4
#: Instances of a local blob store read together in one worker-thread hop, up to this many bytes
#: (a CT study is hundreds of ~0.5 MB files: a hop each cost more than the reading).
BATCH = 4 * CHUNK


class BlobSizeMismatch(RuntimeError):
    """A blob's bytes are not as many as the index says: the response is cut off (a server fault)."""


async def exactly(body: AsyncIterator[bytes], size: int, key: str) -> AsyncIterator[bytes]:
    """``body`` if it is exactly ``size`` bytes long; raises :class:`BlobSizeMismatch` otherwise,
    before a byte beyond ``size`` goes out."""
    sent = 0
    async for chunk in body:
        sent += len(chunk)
        if sent > size:
            break
        yield chunk
    if sent != size:
        raise BlobSizeMismatch(f"blob {key} does not hold the {size} bytes the index records")


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _read_files(files: list[tuple[Path, int]]) -> list[bytes]:
    """Each file's bytes, at most one byte more than its expected size (enough to tell it is longer)."""
    out = []
    for path, size in files:
        with path.open("rb") as fh:
            out.append(fh.read(size + 1))
    return out


def _batches(rows: Sequence[InstanceRow]) -> Iterator[list[InstanceRow]]:
    """Consecutive rows of at most :data:`BATCH` bytes together; a row above :data:`CHUNK` alone."""
    batch: list[InstanceRow] = []
    held = 0
    for row in rows:
        if batch and (held + row.size > BATCH or row.size > CHUNK):
            yield batch
            batch, held = [], 0
        batch.append(row)
        held += row.size
        if row.size > CHUNK:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


async def _as_stored(
    blobs: BlobStore, rows: Sequence[InstanceRow]
) -> AsyncIterator[tuple[InstanceRow, AsyncIterator[bytes]]]:
    """Each row's stored bytes, checked against its indexed size; small blobs of a local store are
    read a batch per worker-thread hop, the rest streamed by the store in chunks."""
    for batch in _batches(rows):
        if not isinstance(blobs, LocalBlobStore) or batch[0].size > CHUNK:
            for row in batch:
                yield row, exactly(blobs.open(row.blob_key), row.size, row.blob_key)
            continue
        files = [(blobs.path(r.blob_key), r.size) for r in batch]
        for row, data in zip(batch, await anyio.to_thread.run_sync(_read_files, files), strict=True):
            yield row, exactly(_once(data), row.size, row.blob_key)


def choose_representation(accept: str | None, rows: Sequence[InstanceRow]) -> tuple[Offer, bool]:
    """The negotiated offer and whether instances go out in mixed, as-stored syntaxes.

    Offers are the stored syntaxes (preferred: no work) and Explicit VR Little Endian, the
    default, produced by :mod:`transcode` for instances stored otherwise.
    """
    stored = sorted({r.transfer_syntax_uid for r in rows})
    offers = [Offer(MULTIPART_RELATED, DICOM, ts) for ts in stored]
    if EXPLICIT_VR_LITTLE_ENDIAN not in stored and all(can_transcode(ts) for ts in stored):
        offers.append(Offer(MULTIPART_RELATED, DICOM, EXPLICIT_VR_LITTLE_ENDIAN))
    wildcard = any(r.transfer_syntax == "*" for r in parse_accept(accept))
    try:
        chosen = negotiate(accept, offers)
    except NotAcceptable as exc:
        raise DicomwebError(406, exc.detail) from exc
    as_stored = wildcard and chosen.transfer_syntax in stored
    if not as_stored and chosen.transfer_syntax != EXPLICIT_VR_LITTLE_ENDIAN and len(stored) > 1:
        raise DicomwebError(
            406,
            f"instances are stored in several transfer syntaxes ({', '.join(stored)}); ask for "
            f"transfer-syntax=* or transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}",
        )
    return chosen, as_stored


async def retrieve(blobs: BlobStore, rows: Sequence[InstanceRow], accept: str | None) -> Response:
    """The multipart response; a single instance needing transcoding is opened and its first frame
    decoded before the first byte, so that a decoding failure is a clean 4xx, not a cut stream."""
    offer, as_stored = choose_representation(accept, rows)
    transcoding = not as_stored and offer.transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN
    ready: dict[str, Transcoding] = {}
    if transcoding and len(rows) == 1 and rows[0].transfer_syntax_uid != EXPLICIT_VR_LITTLE_ENDIAN:
        ready[rows[0].sop_uid] = await start(blobs, rows[0])
    mark = boundary()

    def headers(row: InstanceRow) -> dict[str, str]:
        syntax = EXPLICIT_VR_LITTLE_ENDIAN if transcoding else row.transfer_syntax_uid
        return {"Content-Type": f"{DICOM}; transfer-syntax={syntax}"}

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        if not transcoding:
            async for row, stored in _as_stored(blobs, rows):
                yield headers(row), stored
            return
        for row in rows:
            if row.sop_uid in ready:
                yield headers(row), ready.pop(row.sop_uid).stream()
            else:
                yield headers(row), explicit_little_endian_stream(blobs, row)

    media_type = content_type_related(DICOM, mark) if as_stored else offer.content_type(mark)
    length = (
        {}
        if transcoding
        else {"Content-Length": str(related_length(((headers(r), r.size) for r in rows), mark))}
    )
    body = read_ahead(related_stream(parts(), mark), READ_AHEAD)
    return StreamingResponse(body, media_type=media_type, headers=length)
