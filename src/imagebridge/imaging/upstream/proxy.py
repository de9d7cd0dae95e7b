"""Proxy mode: the DICOMweb Studies Service (PS3.18 §10) of an upstream PACS, behind the gate.

The URL space is the archive's (:mod:`imagebridge.imaging.dicomweb.routes`) and every route goes
through the same ``gated()``; only the handlers differ. A study is reachable only when the EHR
says the caller may see it (:meth:`Gate.may_see_study`): otherwise the one 404 body, whether the
upstream holds the study or not. Bodies stream both ways in bounded chunks; JSON bodies (QIDO-RS
results, metadata, STOW-RS responses) have the upstream's base URL rewritten to this system's in
``RetrieveURL``, ``BulkDataURI`` and ``Location``/``Content-Location``.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from imagebridge.common.read_ahead import read_ahead
from imagebridge.common.splice import SplicedResponse
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.routes import BASE, capability_routes, gated
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import Access
from imagebridge.imaging.upstream.client import (
    DROPPED_RESPONSE_HEADERS,
    UpstreamClient,
    UpstreamError,
    UpstreamRefusal,
    first_value,
    upstream_fault,
)
from imagebridge.imaging.upstream.relay import RelayedResponse, RelayError
from imagebridge.imaging.upstream.sync import enqueue

CHUNK = 1 << 16
#: Bytes gathered from the upstream's reads before they are passed on as one piece.
RELAY_CHUNK = 1 << 20
#: Pieces read from the upstream before the caller has taken them (bounds memory per response).
READ_AHEAD = 4
#: Upstream results fetched per QIDO-RS page while filtering through the gate.
SEARCH_PAGE = 200
#: Largest STOW-RS response read back (to rewrite it and find the stored studies).
MAX_STOW_RESPONSE = 16 * 1024**2
STUDY_UID_TAG = "0020000D"
_STUDY_IN_URL = re.compile(r"/studies/([0-9.]+)")
#: A whole study, series or instance: read by :mod:`relay` (hundreds of MB passed on untouched).
_WHOLE = re.compile(r"/studies/[^/]+(?:/series/[^/]+(?:/instances/[^/]+)?)?")
#: An upstream answer being relayed: through the pooled client, or read off its own connection.
Answer = httpx.Response | RelayedResponse


def _upstream(ctx: ImagingContext) -> UpstreamClient:
    if ctx.upstream is None:
        raise DicomwebError(500, "proxy mode without an upstream")
    return ctx.upstream


def _path_uids(request: Request) -> str:
    params = request.path_params
    for name in ("study", "series", "instance"):
        value = params.get(name)
        if value is not None and not is_valid_uid(value):
            raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    study: str = params["study"]
    return study


async def rewritten(chunks: AsyncIterator[bytes], old: bytes, new: bytes) -> AsyncIterator[bytes]:
    """``chunks`` with every ``old`` replaced by ``new``, holding back at most ``len(old) - 1`` bytes."""
    carry = b""
    async for chunk in chunks:
        buffer = carry + chunk
        out = bytearray()
        position = 0
        while (found := buffer.find(old, position)) != -1:
            out += buffer[position:found] + new
            position = found + len(old)
        keep = max(position, len(buffer) - len(old) + 1)
        out += buffer[position:keep]
        carry = buffer[keep:]
        if out:
            yield bytes(out)
    if carry:
        yield carry


def _relay(upstream: UpstreamClient, upstream_response: Answer, ours: Response, *, rewrite: bool) -> Response:
    """``ours`` carrying the upstream's end-to-end headers, repeated ones included (RFC 9110 §5.3)."""
    own_length = [(k, v) for k, v in ours.raw_headers if k == b"content-length"]
    ours.raw_headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in _response_headers(upstream, upstream_response, rewrite=rewrite)
    ] + own_length
    return ours


def _response_headers(upstream: UpstreamClient, response: Answer, *, rewrite: bool) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    # RFC 9110 §7.6.1: headers the upstream names in Connection are hop-by-hop too
    named = {t.strip().lower() for v in response.headers.get_list("connection") for t in v.split(",")}
    for name, value in response.headers.multi_items():
        lower = name.lower()
        if lower in DROPPED_RESPONSE_HEADERS or lower in named or (rewrite and lower == "content-length"):
            continue
        if lower in ("location", "content-location") and value.startswith(upstream.base):
            value = upstream.own_base + value[len(upstream.base) :]
        headers.append((lower, value))
    return headers


def _is_json(response: Answer) -> bool:
    return "json" in response.headers.get("content-type", "")


async def forward(
    ctx: ImagingContext, request: Request, *, query: str | None = None, rewrite: bool = False
) -> Response:
    """Stream the upstream's answer to the same DICOMweb path (JSON rewritten when ``rewrite``)."""
    upstream = _upstream(ctx)
    path = request.url.path.removeprefix(BASE)
    if "capability" in request.path_params:  # the capability is ours: never sent to the PACS
        path = path.removeprefix(f"/cap/{request.path_params['capability']}")
    headers = await upstream.request_headers(request.headers, identity=rewrite)
    if query is None:
        query = await upstream.query_string(request.query_params.multi_items())
    response: Answer
    if not rewrite and upstream.direct and _WHOLE.fullmatch(path):
        response = await upstream.relayed(path, query, headers)
        body: AsyncIterator[bytes] = response.body()
    else:
        response = await upstream.open("GET", path, query, headers)
        body = response.aiter_raw()  # as read: no re-chunking copy
    if response.status_code == 404:
        await response.aclose()
        return not_found()
    if upstream_fault(response.status_code, response.headers.get("content-type")):
        await response.aclose()
        raise DicomwebError(502, f"the upstream PACS answered {response.status_code}")
    do_rewrite = rewrite and _is_json(response)
    if do_rewrite:
        body = rewritten(body, upstream.base.encode(), upstream.own_base.encode())
    done = BackgroundTask(response.aclose)
    streamed = (
        SplicedResponse(_guarded(body), response, response.status_code, background=done)
        if isinstance(response, RelayedResponse)
        else StreamingResponse(_guarded(body), status_code=response.status_code, background=done)
    )
    return _relay(upstream, response, streamed, rewrite=do_rewrite)


async def _coalesced(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in pieces of about :data:`RELAY_CHUNK` (the pooled client reads at most 64 KiB;
    every piece costs a pass through the audit count, the middleware and the server's send)."""
    pending: list[bytes] = []
    held = 0
    async for chunk in body:
        pending.append(chunk)
        held += len(chunk)
        if held >= RELAY_CHUNK:
            yield b"".join(pending)
            pending.clear()
            held = 0
    if pending:
        yield b"".join(pending)


async def _until_broken(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body until the upstream breaks off mid-stream: the response then ends early (there is
    no status left to send, and a traceback would say nothing more)."""
    with contextlib.suppress(httpx.HTTPError, RelayError):
        async for chunk in body:
            yield chunk


def _guarded(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body in pieces of about :data:`RELAY_CHUNK`, read from the upstream up to
    :data:`READ_AHEAD` pieces ahead of the caller (the next piece arrives while the last one is
    being sent, instead of reading and sending taking turns)."""
    return read_ahead(_coalesced(_until_broken(body)), READ_AHEAD)


async def retrieve(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """WADO-RS (PS3.18 §10.4): studies, series, instances, metadata, bulk data, frames, rendered."""
    study = _path_uids(request)
    if not await ctx.gate.may_see_study(access, study):
        return not_found()
    return await forward(ctx, request, rewrite=request.url.path.endswith("/metadata"))


async def search_in_study(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """QIDO-RS within one study (PS3.18 §10.6): the study's decision covers every result."""
    study = _path_uids(request)
    if not await ctx.gate.may_see_study(access, study):
        return not_found()
    return await forward(ctx, request, rewrite=True)


def _paging(request: Request) -> tuple[list[tuple[str, str]], int | None, int]:
    params = request.query_params
    try:
        limit = int(params["limit"]) if "limit" in params else None
        offset = int(params.get("offset", "0"))
    except ValueError as exc:
        raise DicomwebError(400, "limit and offset must be integers") from exc
    if (limit is not None and limit < 0) or offset < 0:
        raise DicomwebError(400, "limit and offset must not be negative")
    rest = [(k, v) for k, v in params.multi_items() if k not in ("limit", "offset")]
    return rest, limit, offset


async def search_everywhere(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """QIDO-RS over all studies, series or instances, filtered through the gate.

    The upstream is paged through until ``offset + limit`` visible results are known, so
    ``limit``/``offset`` count only what the caller may see and no result of a study the EHR
    withholds is ever returned (PS3.18 §8.3.4.4; ARCHITECTURE.md invariant 3).
    """
    upstream = _upstream(ctx)
    params, limit, offset = _paging(request)
    if not request.url.path.endswith("/studies"):
        params.append(("includefield", STUDY_UID_TAG))
    wanted = None if limit is None else offset + limit
    visible: list[dict[str, Any]] = []
    position = 0
    while wanted is None or len(visible) < wanted:
        page = await upstream.search(
            request.url.path.removeprefix(BASE),
            [*params, ("limit", str(SEARCH_PAGE)), ("offset", str(position))],
        )
        position += len(page)
        uids = [u for u in (first_value(item, STUDY_UID_TAG) for item in page) if isinstance(u, str)]
        allowed = await ctx.gate.visible_studies(access, uids)
        visible += [item for item in page if first_value(item, STUDY_UID_TAG) in allowed]
        if len(page) < SEARCH_PAGE:
            break
    results = visible[offset:wanted]
    body = json.dumps(results, separators=(",", ":")).encode()
    body = body.replace(upstream.base.encode(), upstream.own_base.encode())
    return Response(body, 200, media_type="application/dicom+json")


async def store(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """STOW-RS (PS3.18 §10.5) forwarded as a stream; stored studies are queued for publishing.

    The stream reaches the PACS unjudged, so only a client the EHR registered as an imaging source
    (grant ``write`` mode ``any``) may store here; any other writer is refused whole (403), as
    instances cannot be decided per PatientID on the way (security.md ISO-08; docs/proxy.md).
    """
    if not access.info.write.unlimited:
        raise DicomwebError(
            403, "in proxy mode only a registered imaging source may store instances (STOW-RS)"
        )
    upstream = _upstream(ctx)
    if "study" in request.path_params:
        _path_uids(request)
    headers = await upstream.request_headers(request.headers, identity=True)
    response = await upstream.open(
        "POST", request.url.path.removeprefix(BASE), "", headers, content=request.stream()
    )
    try:
        chunks = []
        size = 0
        async for chunk in response.aiter_raw(CHUNK):
            size += len(chunk)
            if size > MAX_STOW_RESPONSE:
                raise DicomwebError(502, "the upstream PACS answered STOW-RS with an oversized body")
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise UpstreamError(f"the upstream PACS broke off: {type(exc).__name__}") from exc
    finally:
        await response.aclose()
    body = b"".join(chunks)
    if upstream_fault(response.status_code, response.headers.get("content-type")):
        raise DicomwebError(502, f"the upstream PACS answered STOW-RS with {response.status_code}")
    studies = sorted(set(_STUDY_IN_URL.findall(body.decode("utf-8", "replace"))))
    if studies:
        await enqueue(ctx.engine, studies)
        ctx.publisher.wakeup.set()
    body = body.replace(upstream.base.encode(), upstream.own_base.encode())
    return _relay(upstream, response, Response(body, response.status_code), rewrite=True)


def _upstream_errors(handler: Callable[..., Any]) -> Callable[..., Any]:
    """The PACS unreachable, failing or answering garbage is a 502 (the EHR's faults are 503, not
    this); a PACS refusing the caller's query as such (400, 413, …) answers that status."""

    async def wrapped(ctx: ImagingContext, access: Access, request: Request) -> Response:
        try:
            response: Response = await handler(ctx, access, request)
        except UpstreamError as exc:
            raise DicomwebError(502, str(exc)) from exc
        except UpstreamRefusal as exc:
            raise DicomwebError(exc.status, str(exc)) from exc
        return response

    return wrapped


_STUDY = f"{BASE}/studies/{{study}}"
_SERIES = f"{_STUDY}/series/{{series}}"
_INSTANCE = f"{_SERIES}/instances/{{instance}}"
_FRAMES = f"{_INSTANCE}/frames/{{frames}}"
_read = gated(_upstream_errors(retrieve))

routes: list[BaseRoute] = [
    Route(f"{BASE}/studies", gated(_upstream_errors(search_everywhere)), methods=["GET"]),
    Route(f"{BASE}/series", gated(_upstream_errors(search_everywhere)), methods=["GET"]),
    Route(f"{BASE}/instances", gated(_upstream_errors(search_everywhere)), methods=["GET"]),
    Route(f"{_STUDY}/series", gated(_upstream_errors(search_in_study)), methods=["GET"]),
    Route(f"{_STUDY}/instances", gated(_upstream_errors(search_in_study)), methods=["GET"]),
    Route(f"{_SERIES}/instances", gated(_upstream_errors(search_in_study)), methods=["GET"]),
    Route(f"{BASE}/studies", gated(_upstream_errors(store), "write"), methods=["POST"]),
    Route(_STUDY, gated(_upstream_errors(store), "write"), methods=["POST"]),
    *(
        Route(path, _read, methods=["GET"])
        for path in (
            _STUDY,
            _SERIES,
            _INSTANCE,
            f"{_STUDY}/metadata",
            f"{_SERIES}/metadata",
            f"{_INSTANCE}/metadata",
            f"{_INSTANCE}/bulkdata/{{tagpath:path}}",
            f"{_INSTANCE}/bulk/{{tagpath:path}}",  # Orthanc's BulkDataURI spelling
            _FRAMES,
            f"{_STUDY}/rendered",
            f"{_SERIES}/rendered",
            f"{_INSTANCE}/rendered",
            f"{_FRAMES}/rendered",
            f"{_STUDY}/thumbnail",
            f"{_SERIES}/thumbnail",
            f"{_INSTANCE}/thumbnail",
            f"{_FRAMES}/thumbnail",
        )
    ),
]
routes += capability_routes(routes)
