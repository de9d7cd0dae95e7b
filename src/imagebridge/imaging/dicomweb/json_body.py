"""DICOM JSON responses: Accept negotiation, ETag / If-None-Match, gzip (PS3.18 §8.7.4, RFC 9110).

QIDO-RS results and WADO-RS metadata are ``application/dicom+json`` (``application/json`` is
accepted as the same bytes, for generic HTTP clients); any other Accept is 406 naming both.
An ETag validator lets a viewer revalidate metadata with ``If-None-Match`` (304, RFC 9110
§13.1.2); the body is gzip-compressed when ``Accept-Encoding`` allows it (RFC 9110 §12.5.3).
"""

from __future__ import annotations

import gzip
from functools import partial

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.media import NotAcceptable, Offer, negotiate

DICOM_JSON = "application/dicom+json"
JSON_OFFERS = (Offer(DICOM_JSON), Offer("application/json"))
GZIP_MINIMUM = 1024
"""Bodies shorter than this are sent uncompressed (the gzip header would not pay for itself)."""
GZIP_INLINE = 256 * 1024
"""Bodies up to this size are compressed on the event loop; larger ones in a worker thread."""


def negotiate_json(request: Request) -> str:
    """The JSON media type to answer with; 406 when the Accept header allows neither."""
    try:
        return negotiate(request.headers.get("accept"), JSON_OFFERS).media_type
    except NotAcceptable as exc:
        raise DicomwebError(406, exc.detail) from exc


def accepts_gzip(request: Request) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (an explicit ``q=0`` refuses it)."""
    for element in request.headers.get("accept-encoding", "").split(","):
        coding, _, params = element.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            name, _, value = params.partition("=")
            if name.strip().lower() != "q":
                return True
            try:
                return float(value.strip()) > 0
            except ValueError:
                return False
    return False


def not_modified(request: Request, etag: str) -> bool:
    """``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 §13.1.2) or is ``*``."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


async def json_response(
    request: Request,
    body: bytes,
    media_type: str,
    *,
    etag: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A DICOM JSON body, gzip-compressed when the client allows it."""
    extra = dict(headers or {})
    extra["Vary"] = "Accept, Accept-Encoding"
    if etag is not None:
        extra["ETag"] = etag
    if len(body) >= GZIP_MINIMUM and accepts_gzip(request):
        if len(body) < GZIP_INLINE:
            body = gzip.compress(body, compresslevel=1, mtime=0)
        else:  # large study metadata: compress off the event loop
            body = await anyio.to_thread.run_sync(partial(gzip.compress, body, compresslevel=1, mtime=0))
        extra["Content-Encoding"] = "gzip"
    return Response(body, media_type=media_type, headers=extra)


def not_modified_response(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Vary": "Accept, Accept-Encoding"})
