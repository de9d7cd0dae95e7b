"""WADO-RS rendered resources: ``…/rendered`` and ``…/thumbnail`` (PS3.18 §10.4.1.1.4, §8.3.5.1).

Consumer-ready images of one frame in ``image/jpeg`` (default), ``image/png`` or ``image/gif``.
Rendered Study and Rendered Series (mandatory resources of PS3.18 Table 10.3-2) contain the
rendered instances of the study or series: a ``multipart/related`` body with one image per
instance that has pixel data, each what the instance's own ``/rendered`` answers, rendered one
at a time while the response streams (memory does not grow with the study).
Grayscale frames pass through the Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence),
then the VOI LUT: the ``window`` query parameter if given, else the instance's VOI LUT Sequence or
Window Center/Width (with VOI LUT Function), else the frame's own range; MONOCHROME1 is inverted so
that the result is always "black is low". Colour frames (RGB, YBR converted to RGB by the decoder,
PALETTE COLOR through its LUT) are scaled to 8 bits.

Query parameters (§8.3.5.1): ``quality`` (1-100, JPEG only), ``window=center,width[,shape]`` with
shape ``linear`` (PS3.3 C.11.2.1.2.1) or ``sigmoid`` (C.11.2.1.3.1), ``viewport=vw,vh`` or
``viewport=vw,vh,sx,sy,sw,sh`` (source region, a negative width or height flips; the result is
scaled to fit ``vw`` x ``vh`` preserving aspect ratio). ``annotation`` is accepted and not burned
in. Decoding is bounded by the pixel budget of :mod:`pixels` (413 beyond it).
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagebridge.common.multipart import boundary, related_stream
from imagebridge.imaging.archive.blobs import BlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import pixels
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.frames import admitted_rows, once, parse_frame_list
from imagebridge.imaging.dicomweb.header_cache import HEADERS
from imagebridge.imaging.dicomweb.jpeg_display import display_frame
from imagebridge.imaging.dicomweb.media import MULTIPART_RELATED, NotAcceptable, Offer, negotiate
from imagebridge.imaging.gate.gate import Access

OFFERS = (Offer("image/jpeg"), Offer("image/png"), Offer("image/gif"))
"""Rendered media types, default first (PS3.18 Table 8.7.4-1 single-frame types)."""
RELATED_OFFERS = tuple(Offer(MULTIPART_RELATED, offer.media_type) for offer in OFFERS)
"""Rendered Study and Series: one rendered image per part."""
_PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
MAX_VIEWPORT = 8192
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    shape: str = "linear"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    source: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh


@dataclass(frozen=True)
class RenderOptions:
    media_type: str
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


def _numbers(name: str, text: str, count: tuple[int, ...]) -> list[float]:
    pieces = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in pieces]
    except ValueError:
        values = []
    if len(values) not in count or not all(np.isfinite(values)):
        raise DicomwebError(
            400, f"{name} must be {' or '.join(str(c) for c in count)} comma-separated numbers"
        )
    return values


def parse_window(text: str) -> Window:
    """``window=center,width[,shape]`` (PS3.18 §8.3.5.1.4)."""
    pieces = text.split(",")
    shape = pieces[2].strip().lower() if len(pieces) == 3 else "linear"
    if shape not in ("linear", "sigmoid"):
        raise DicomwebError(400, "window shape must be linear or sigmoid")
    center, width = _numbers("window", ",".join(pieces[:2]), (2,))
    if width < 1:
        raise DicomwebError(400, "window width must be at least 1")
    return Window(center, width, shape)


def parse_viewport(text: str) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3)."""
    values = [int(v) for v in _numbers("viewport", text, (2, 6))]
    width, height = values[:2]
    if not (1 <= width <= MAX_VIEWPORT and 1 <= height <= MAX_VIEWPORT):
        raise DicomwebError(400, f"viewport width and height must be between 1 and {MAX_VIEWPORT}")
    source = None
    if len(values) == 6:
        sx, sy, sw, sh = values[2:]
        if sx < 0 or sy < 0 or sw == 0 or sh == 0:
            raise DicomwebError(400, "viewport source region needs sx, sy >= 0 and non-zero sw, sh")
        source = (sx, sy, sw, sh)
    return Viewport(width, height, source)


def _image_media_type(accept: str | None, several: bool) -> str:
    """The image media type to encode: of the response, or of each part when ``several``.

    For several images ``multipart/related; type="image/…"`` is what PS3.18 asks for; a bare
    image media range (what dicomweb-client's ``retrieve_series_rendered`` sends) is read as
    naming the type of the parts. 406 when neither matches.
    """
    try:
        return negotiate(accept, OFFERS).media_type
    except NotAcceptable as exc:
        if not several:
            raise DicomwebError(406, exc.detail) from exc
    try:
        return negotiate(accept, RELATED_OFFERS).representation
    except NotAcceptable as exc:
        raise DicomwebError(406, NotAcceptable(RELATED_OFFERS, accept).detail) from exc


def parse_options(
    query: QueryParams,
    accept: str | None,
    default_viewport: Viewport | None = None,
    *,
    several: bool = False,
) -> RenderOptions:
    """The rendering the request asks for; 400 for malformed parameters, 406 for Accept."""
    media_type = _image_media_type(accept, several)
    quality = 90
    if "quality" in query:
        text = query["quality"].strip()
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise DicomwebError(400, "quality must be an integer from 1 to 100")
        quality = int(text)
    window = parse_window(query["window"]) if "window" in query else None
    viewport = parse_viewport(query["viewport"]) if "viewport" in query else default_viewport
    return RenderOptions(media_type, quality, window, viewport)


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Window to 0..1: linear per PS3.3 C.11.2.1.2.1, sigmoid per C.11.2.1.3.1."""
    c, w = window.center, window.width
    if window.shape == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if w <= 1:
        return (values > c - 0.5).astype(np.float32)
    return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)


def _first(value: object) -> float:
    """The first of a possibly multi-valued DS (several windows may be offered)."""
    return float(value[0] if isinstance(value, Sequence) else value)  # type: ignore[arg-type]


def _dataset_window(ds: Dataset) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    shape = "sigmoid" if str(ds.get("VOILUTFunction", "")).upper() == "SIGMOID" else "linear"
    return Window(center, max(width, 1.0), shape) if width > 0 else None


def _grayscale(
    frame: np.ndarray, ds: Dataset, window: Window | None, present: np.ndarray | None = None
) -> np.ndarray:
    """A grayscale frame to 0..1 through the Modality LUT and the VOI LUT (PS3.4 N.2).

    ``present`` (when ``frame`` is the domain of a lookup table rather than a frame) marks the
    values the frame really holds: the frame's own range is taken over those alone.
    """
    values = apply_modality_lut(frame, ds).astype(np.float32, copy=False)
    chosen = window or (None if "VOILUTSequence" in ds else _dataset_window(ds))
    if chosen is not None:
        unit = _apply_window(values, chosen)
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(values.astype(frame.dtype if frame.dtype.kind in "iu" else np.int32), ds)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = lut.astype(np.float32) / float(2**bits - 1)
    else:
        held = values if present is None else values[present]
        low, high = float(held.min()), float(held.max())
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _unit_to_8bit(unit: np.ndarray) -> np.ndarray:
    gray: np.ndarray = np.rint(np.clip(unit, 0.0, 1.0) * 255.0)
    return gray.astype(np.uint8)


def _gray_8bit(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """A grayscale frame to 8 bits. An 8- or 16-bit integer frame goes through a lookup table
    built over the values between its minimum and maximum (every step of :func:`_grayscale`
    maps each stored value on its own, so the table gives the same pixels), indexed by the
    stored bits read as unsigned: far less work than transforming every pixel in floating point."""
    if frame.dtype.kind not in "iu" or frame.dtype.itemsize > 2 or frame.size == 0:
        return _unit_to_8bit(_grayscale(frame, ds, window))
    unsigned = np.dtype(f"u{frame.dtype.itemsize}")
    low, high = int(frame.min()), int(frame.max())
    domain = np.arange(low, high + 1, dtype=frame.dtype)
    present = None  # a linear rescale keeps the range's ends at the frame's minimum and maximum
    if "ModalityLUTSequence" in ds:
        present = np.bincount(frame.ravel().astype(np.int32) - low, minlength=domain.size) > 0
    table = np.zeros(2 ** (8 * frame.dtype.itemsize), dtype=np.uint8)
    table[domain.view(unsigned)] = _unit_to_8bit(_grayscale(domain, ds, window, present))
    pixels8: np.ndarray = np.take(table, frame.view(unsigned))
    return pixels8


def to_8bit(frame: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """A decoded frame as 8-bit grayscale (H, W) or RGB (H, W, 3) for display."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        bits = 16 if frame.dtype.itemsize > 1 else 8
    elif frame.ndim == 3:
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    else:
        return _gray_8bit(frame, ds, window)
    if bits <= 8:
        return frame.astype(np.uint8)
    return (frame.astype(np.float32) * (255.0 / float(2**bits - 1))).clip(0, 255).astype(np.uint8)


_FRAME_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def frame_attributes(ds: Dataset, index: int) -> Dataset:
    """``ds`` as frame ``index`` sees it: the Pixel Value Transformation and Frame VOI LUT
    functional groups of an enhanced multi-frame object (PS3.3 C.7.6.16.2.9, C.7.6.16.2.10),
    shared then per-frame, lifted to the top level where the LUT functions look for them."""
    groups = [seq[0] for seq in [ds.get("SharedFunctionalGroupsSequence")] if seq]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if not groups:
        return ds
    view = Dataset()  # a shallow copy: Dataset(ds) would share ds's element dictionary
    view.update(ds)
    for group in groups:
        for keyword in _FRAME_MACROS:
            if group.get(keyword):
                for element in group[keyword][0]:
                    view.add(element)
    return view


def _fit(image: Image.Image, viewport: Viewport) -> Image.Image:
    if viewport.source is not None:
        sx, sy, sw, sh = viewport.source
        left, top = min(sx, sx + sw), min(sy, sy + sh)
        image = image.crop((left, top, left + abs(sw), top + abs(sh)))
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR) if size != image.size else image


def encode(pixels8: np.ndarray, options: RenderOptions) -> bytes:
    """Fit to the viewport and encode as the negotiated media type."""
    image = Image.fromarray(pixels8, mode="RGB" if pixels8.ndim == 3 else "L")
    if options.viewport is not None:
        image = _fit(image, options.viewport)
    out = io.BytesIO()
    if options.media_type == "image/jpeg":
        image.save(out, "JPEG", quality=options.quality)
    elif options.media_type == "image/png":
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, _PIL_FORMATS[options.media_type])
    return out.getvalue()


def render_frame(blobs: BlobStore, row: InstanceRow, number: int | None, options: RenderOptions) -> bytes:
    """Decode, window and encode one frame (1-based; None = the middle frame). Worker thread only."""
    with pixels.reading(blobs, row.blob_key, row.size) as fp:
        return _render_open(fp, HEADERS.header(row.blob_key, fp), number, options)


def render_if_image(blobs: BlobStore, row: InstanceRow, options: RenderOptions) -> bytes | None:
    """Frame 1 of ``row`` rendered, or None when the instance has no pixel data (an SR, a
    presentation state…: nothing to render in an image media type). Worker thread only."""
    with pixels.reading(blobs, row.blob_key, row.size) as fp:
        header = HEADERS.header(row.blob_key, fp)
        return _render_open(fp, header, 1, options) if header.has_pixels else None


def _render_open(
    fp: io.BufferedReader, header: pixels.PixelHeader, number: int | None, options: RenderOptions
) -> bytes:
    header.check_frame_budget()
    if number is None:
        number = (header.frames + 1) // 2
    if number > header.frames:
        raise DicomwebError(404, f"frame {number} does not exist: the instance has {header.frames} frame(s)")
    frame = display_frame(fp, header, number - 1)
    if frame.ndim == 3 and frame.shape[-1] not in (3, 4):
        frame = frame[..., 0]
    return encode(to_8bit(frame, frame_attributes(header.dataset, number - 1), options.window), options)


async def render(blobs: BlobStore, row: InstanceRow, number: int | None, options: RenderOptions) -> Response:
    """The rendered (or thumbnail) response for one frame of ``row``."""
    body = await pixels.in_worker(render_frame, blobs, row, number, options)
    return Response(body, media_type=options.media_type)


async def render_several(
    ctx: ImagingContext, rows: Sequence[InstanceRow], options: RenderOptions
) -> Response:
    """Rendered Study / Series: one part per instance with pixel data, in series/instance order.

    Instances are rendered one at a time as the body streams. The first image is rendered before
    the response starts, so a decoding failure there is a clean 4xx (404 when no instance has
    pixel data); a later instance that cannot be rendered ends the body without its closing
    delimiter, never a shorter study presented as complete.
    """
    pending = iter(rows)
    first: tuple[InstanceRow, bytes] | None = None
    for row in pending:
        image = await pixels.in_worker(render_if_image, ctx.blobs, row, options)
        if image is not None:
            first = (row, image)
            break
    if first is None:
        raise DicomwebError(404, "no instance here has pixel data to render")
    first_row, first_image = first
    base = ctx.settings.dicomweb_base

    def headers(row: InstanceRow) -> dict[str, str]:
        location = f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}/rendered"
        return {"Content-Type": options.media_type, "Content-Location": location}

    async def parts() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        yield headers(first_row), once(first_image)
        for row in pending:
            image = await pixels.in_worker(render_if_image, ctx.blobs, row, options)
            if image is not None:
                yield headers(row), once(image)

    mark = boundary()
    return StreamingResponse(
        related_stream(parts(), mark),
        media_type=Offer(MULTIPART_RELATED, options.media_type).content_type(mark),
    )


async def rendered_endpoint(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``GET …/rendered`` at study, series, instance and frame level (PS3.18 §10.4.1.1.4).

    Instance level renders frame 1, frame level the one frame named; study and series level
    answer every instance (:func:`render_several`). Same parameters and gate at every level.
    """
    if "instance" not in request.path_params:
        options = parse_options(request.query_params, request.headers.get("accept"), several=True)
        return await render_several(ctx, await admitted_rows(ctx, access, request), options)
    number = 1
    if "frames" in request.path_params:
        numbers = parse_frame_list(request.path_params["frames"])
        if len(numbers) != 1:
            raise DicomwebError(400, "/rendered takes one frame number")
        number = numbers[0]
    options = parse_options(request.query_params, request.headers.get("accept"))
    rows = await admitted_rows(ctx, access, request)
    return await render(ctx.blobs, rows[0], number, options)


async def thumbnail_endpoint(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``GET …/thumbnail`` at study, series, instance and frame level (PS3.18 §10.4.1.1.6).

    The representative image is the middle frame of the middle instance of the (first) series,
    or the named frame; it fits ``viewport`` (default 128 x 128).
    """
    number = None
    if "frames" in request.path_params:
        number = parse_frame_list(request.path_params["frames"])[0]
    options = parse_options(
        request.query_params, request.headers.get("accept"), Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    )
    rows = await admitted_rows(ctx, access, request)
    series = [r for r in rows if r.series_uid == rows[0].series_uid]
    return await render(ctx.blobs, series[(len(series) - 1) // 2], number, options)
