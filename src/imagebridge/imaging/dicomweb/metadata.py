"""WADO-RS metadata of a study, series or instance (PS3.18 §10.4.1.1.2, Annex F).

The answer is a DICOM JSON array, one object per instance, assembled from the per-instance JSON
precomputed at ingest (``instances.metadata_json``): no file is opened and no JSON is parsed
per request. Large values carry a ``BulkDataURI`` stored relative to the DICOMweb base
(``studies/…/bulkdata/<tag path>``) and made absolute here by a byte substitution, which is
exact because orjson writes ``"BulkDataURI":"`` with no spaces and a ``"`` inside any JSON
string is escaped. The ETag names the instances and their content hashes, so
``If-None-Match`` revalidation (304) costs one index query.
"""

from __future__ import annotations

import hashlib
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


async def retrieve_metadata(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``GET …/metadata`` at study, series or instance level."""
    params = request.path_params
    study, series_uid, sop_uid = params["study"], params.get("series"), params.get("instance")
    if not all(v is None or is_valid_uid(v) for v in (study, series_uid, sop_uid)):
        raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    media_type = negotiate_json(request)
    stmt = (
        select(instances.c.sop_uid, instances.c.sha256, instances.c.metadata_json)
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
    digest = hashlib.sha256(_FORMAT + base)
    for row in rows:
        digest.update(f"{row.sop_uid}:{row.sha256};".encode())
    etag = f'"{digest.hexdigest()[:40]}"'
    if not_modified(request, etag):
        return not_modified_response(etag)
    body = b"[" + b",".join(instance_object(row.metadata_json) for row in rows) + b"]"
    body = body.replace(_RELATIVE_URI, b'"BulkDataURI":"' + base + b"/studies/")
    return json_response(request, body, media_type, etag=etag, headers={"Cache-Control": "private, no-cache"})
