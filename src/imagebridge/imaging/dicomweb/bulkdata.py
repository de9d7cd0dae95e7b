"""WADO-RS bulk data: ``GET {BulkDataURI}`` (PS3.18 §10.4.1.1.5, §8.7.3.3) with HTTP ``Range``.

Our BulkDataURIs are ``{base}/studies/{study}/series/{series}/instances/{instance}/bulkdata/
{tag path}``. The value is located in the stored file by :mod:`.bulkdata_locate` and streamed
from the blob store chunk by chunk: memory does not grow with the value's size.

Representations (PS3.18 Table 8.7.3-5): ``multipart/related; type="application/octet-stream"``
(the default, one part) or, when asked for, a single ``application/octet-stream`` body. A single
byte range (RFC 9110 §14.2) is answered 206 with ``Content-Range`` (on the response for a single
body, on the part for multipart); several ranges are answered with the whole value (RFC 9110
§14.2 allows ignoring them); an unsatisfiable one is 416. Encapsulated (compressed) pixel data
is retrieved through ``/frames``, not here.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagebridge.common.multipart import boundary, related_stream
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.bulkdata_locate import BlobReader, Unlocatable, locate
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MULTIPART_RELATED,
    NotAcceptable,
    Offer,
    negotiate,
)
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import Access

OCTET_STREAM = "application/octet-stream"
OFFERS = (
    Offer(MULTIPART_RELATED, OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN),
    Offer(OCTET_STREAM, None, EXPLICIT_VR_LITTLE_ENDIAN),
)
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range ``[start, end)`` a ``Range`` header asks for (RFC 9110 §14.1.2).

    None means "send everything" (no header, several ranges, or a unit other than bytes);
    :class:`DicomwebError` 416 when the one range cannot be satisfied.
    """
    if header is None or "," in header:
        return None
    found = _RANGE.fullmatch(header)
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = min(size, int(last) + 1) if last else size
        if last and int(last) < start:
            return None  # syntactically invalid: ignore the header (RFC 9110 §14.2)
    if start >= size or start >= end:
        raise DicomwebError(
            416,
            f"the range {header[:100]!r} is outside the {size}-byte value",
            {"Content-Range": f"bytes */{size}"},
        )
    return start, end


async def retrieve_bulkdata(ctx: ImagingContext, access: Access, request: Request) -> Response:
    params = request.path_params
    study, series_uid, sop_uid = params["study"], params["series"], params["instance"]
    if not all(is_valid_uid(v) for v in (study, series_uid, sop_uid)):
        raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    try:
        path = dicom_json.parse_tag_path(params["tagpath"])
    except ValueError as exc:
        raise DicomwebError(400, f"{exc}; expected tag[/item/tag]… in eight hex digits") from exc
    try:
        offer = negotiate(request.headers.get("accept"), OFFERS)
    except NotAcceptable as exc:
        raise DicomwebError(406, exc.detail) from exc
    rows = await ctx.index.instances_of(study, series_uid, sop_uid)
    if not rows or not await ctx.gate.may_see_study(access, study):
        return not_found()
    row = rows[0]
    reader = BlobReader(ctx.blobs, row.blob_key, row.size)
    try:
        value = await locate(reader, row.transfer_syntax_uid, path)
    except Unlocatable:
        return not_found()
    if value.encapsulated:
        raise DicomwebError(
            406,
            "this value is encapsulated (compressed) pixel data; retrieve it by frame with "
            f"{ctx.settings.dicomweb_base}/studies/{study}/series/{series_uid}/instances/{sop_uid}/frames/1",
        )
    wanted = parse_range(request.headers.get("range"), value.length)
    start, end = wanted if wanted is not None else (0, value.length)
    body = ctx.blobs.open(row.blob_key, value.offset + start, value.offset + end)
    content_range = f"bytes {start}-{end - 1}/{value.length}" if wanted is not None else None
    status = 206 if wanted is not None else 200
    headers = {"Accept-Ranges": "bytes"}
    if offer.related_type is None:
        headers["Content-Length"] = str(end - start)
        if content_range:
            headers["Content-Range"] = content_range
        return StreamingResponse(body, status_code=status, media_type=offer.content_type(), headers=headers)
    mark = boundary()
    part_headers = {"Content-Type": offer.part_content_type}
    if content_range:
        part_headers["Content-Range"] = content_range

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield part_headers, body

    stream = related_stream(parts(), mark)
    return StreamingResponse(stream, status_code=status, media_type=offer.content_type(mark), headers=headers)
