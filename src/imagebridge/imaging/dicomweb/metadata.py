"""WADO-RS metadata of a study, series or instance (PS3.18 §10.4.1.1.2, Annex F).

The answer is a DICOM JSON array, one object per instance, assembled from the per-instance JSON
precomputed at ingest (``instances.metadata_json``): no file is opened and no JSON is parsed
per request. Large values carry a ``BulkDataURI`` stored relative to the DICOMweb base
(``studies/…/bulkdata/<tag path>``) and made absolute here by a byte substitution, which is
exact because orjson writes ``"BulkDataURI":"`` with no spaces and a ``"`` inside any JSON
string is escaped. The ETag names the instances and their content hashes, so
``If-None-Match`` revalidation (304) costs one light index query, and assembled bodies are
kept per ETag (:class:`BodyCache`) for viewers that reopen a study.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.json_body import (
    json_response,
    negotiate_json,
    not_modified,
    not_modified_response,
)
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import Access
from imagebridge.imaging.tables import instances, series

_RELATIVE_URI = b'"BulkDataURI":"studies/'
_FORMAT = b"metadata-v1"  # changes whenever the JSON this module produces changes shape


def absolute_bulkdata_uris(value: Any, base: str) -> Any:
    """``value`` (parsed DICOM JSON) with every stored relative BulkDataURI made absolute."""
    if isinstance(value, dict):
        return {
            k: f"{base}/{v}"
            if k == "BulkDataURI" and isinstance(v, str) and v.startswith("studies/")
            else absolute_bulkdata_uris(v, base)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [absolute_bulkdata_uris(v, base) for v in value]
    return value


def instance_object(stored: bytes) -> bytes:
    """The stored JSON object of one instance (stored as a one-element array or as an object)."""
    stored = stored.strip()
    return stored[1:-1] if stored[:1] == b"[" else stored


class BodyCache:
    """Assembled metadata bodies by ETag, up to ``max_bytes`` in all (least recently used out).

    A body is a function of its ETag (instances are immutable once stored, and the ETag names
    each instance's content hash), so a viewer reopening a study costs one light index query.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, etag: str) -> bytes | None:
        body = self._bodies.get(etag)
        if body is not None:
            self._bodies.move_to_end(etag)
        return body

    def put(self, etag: str, body: bytes) -> None:
        if len(body) > self.max_bytes // 4 or etag in self._bodies:
            return
        self._bodies[etag] = body
        self._size += len(body)
        while self._size > self.max_bytes:
            _, dropped = self._bodies.popitem(last=False)
            self._size -= len(dropped)


_BODIES = BodyCache()


def _etag(base: bytes, rows: Sequence[Any]) -> str:
    digest = hashlib.sha256(_FORMAT + base)
    for row in rows:
        digest.update(f"{row.sop_uid}:{row.sha256};".encode())
    return f'"{digest.hexdigest()[:40]}"'


async def retrieve_metadata(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``GET …/metadata`` at study, series or instance level."""
    params = request.path_params
    study, series_uid, sop_uid = params["study"], params.get("series"), params.get("instance")
    if not all(v is None or is_valid_uid(v) for v in (study, series_uid, sop_uid)):
        raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    media_type = negotiate_json(request)
    stmt = (
        select(instances.c.sop_uid, instances.c.sha256)
        .join(series, series.c.series_uid == instances.c.series_uid)
        .where(instances.c.study_uid == study)
        .order_by(
            series.c.series_number, instances.c.series_uid, instances.c.instance_number, instances.c.sop_uid
        )
    )
    if series_uid is not None:
        stmt = stmt.where(instances.c.series_uid == series_uid)
    if sop_uid is not None:
        stmt = stmt.where(instances.c.sop_uid == sop_uid)
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    if not rows or not await ctx.gate.may_see_study(access, study):
        return not_found()
    base = ctx.settings.dicomweb_base.encode()
    etag = _etag(base, rows)
    if not_modified(request, etag):
        return not_modified_response(etag)
    body = _BODIES.get(etag)
    if body is None:
        async with ctx.engine.connect() as conn:
            rows = (await conn.execute(stmt.add_columns(instances.c.metadata_json))).all()
        etag = _etag(base, rows)  # an instance may have arrived in between
        body = b"[" + b",".join(memoryview(r.metadata_json)[_span(r.metadata_json)] for r in rows) + b"]"
        body = body.replace(_RELATIVE_URI, b'"BulkDataURI":"' + base + b"/studies/")
        _BODIES.put(etag, body)
    return await json_response(
        request, body, media_type, etag=etag, headers={"Cache-Control": "private, no-cache"}
    )


def _span(stored: bytes) -> slice:
    """Where the object of one instance lies in its stored JSON (a one-element array or an object)."""
    return slice(1, -1) if stored[:1] == b"[" else slice(None)
