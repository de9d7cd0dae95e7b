"""STOW-RS: ``POST {base}/studies[/{study}]`` (PS3.18 §10.5).

The request body is parsed as it streams in; each part is spooled to disk, validated, made
durable in the blob store and indexed before it is acknowledged (ARCHITECTURE.md invariant 5).
One bad part fails on its own; the rest of the request is judged part by part. The answer is
the Store Instances Response Module (PS3.18 Annex I) with 200, 202, 400 or 409
(Table 10.5.3-1), 413 for oversized bodies and 415 for other media types.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.imaging.archive.ingest import (
    CANNOT_UNDERSTAND,
    STUDY_MISMATCH,
    InstanceRejected,
    ParsedInstance,
    parse,
    spool,
)
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.levels import level_json
from imagebridge.imaging.dicomweb.media import UnsupportedMediaType, parse_stow_content_type
from imagebridge.imaging.dicomweb.multipart import MultipartError, PartTooLarge, iter_parts
from imagebridge.imaging.dicomweb.uids import is_valid_uid

DICOM_JSON = "application/dicom+json"


def _item(sop_class: str, sop_uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    item.update(extra)
    return item


async def store_instances(ctx: ImagingContext, request: Request, url_study: str | None) -> Response:
    if url_study is not None and not is_valid_uid(url_study):
        raise DicomwebError(400, "the Study Instance UID in the URL is not a valid UID")
    try:
        content_type = parse_stow_content_type(request.headers.get("content-type"))
    except UnsupportedMediaType as exc:
        raise DicomwebError(415, str(exc)) from exc
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > ctx.settings.max_request_bytes:
        raise DicomwebError(413, f"the request body exceeds {ctx.settings.max_request_bytes} bytes")
    base = ctx.settings.dicomweb_base
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    body_error: str | None = None
    spool_dir = ctx.settings.data_dir / "spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    try:
        async for part in iter_parts(
            request.stream(),
            content_type.boundary.encode("latin-1"),
            max_part_bytes=ctx.settings.max_request_bytes,
        ):
            part_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
            if part_type != "application/dicom":
                failed.append(_item("", "", **{"00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}}))
                continue
            spooled = await spool(part.body, spool_dir)
            try:
                parsed = await anyio.to_thread.run_sync(parse, spooled)
                if url_study is not None and parsed.attr("StudyInstanceUID") != url_study:
                    raise InstanceRejected(
                        STUDY_MISMATCH,
                        "the instance belongs to another study than the URL names",
                        parsed.attr("SOPClassUID"),
                        parsed.attr("SOPInstanceUID"),
                    )
                stored = await _store(ctx, parsed)
            except InstanceRejected as exc:
                spooled.path.unlink(missing_ok=True)
                failed.append(
                    _item(
                        exc.sop_class, exc.sop_instance, **{"00081197": {"vr": "US", "Value": [exc.reason]}}
                    )
                )
                continue
            row = stored
            referenced.append(
                _item(
                    row.sop_class_uid,
                    row.sop_uid,
                    **{
                        "00081190": {
                            "vr": "UR",
                            "Value": [
                                f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"
                            ],
                        }
                    },
                )
            )
    except PartTooLarge as exc:
        if not referenced:
            raise DicomwebError(413, str(exc)) from exc
        body_error = str(exc)
    except MultipartError as exc:
        if not referenced:
            raise DicomwebError(400, f"malformed multipart body: {exc}") from exc
        body_error = str(exc)
    if referenced:
        ctx.publisher.wakeup.set()
    return _response(ctx, url_study, referenced, failed, body_error)


async def _store(ctx: ImagingContext, parsed: ParsedInstance) -> Any:
    metadata = dicom_json.json_bytes(
        [dicom_json.dataset_to_json(parsed.dataset, bulkdata_uri=_bulk_template(parsed))]
    )
    await ctx.blobs.put_file(parsed.spooled.sha256, parsed.spooled.path)
    stored = await ctx.index.add(
        parsed,
        study_json=level_json(parsed.dataset, "study"),
        series_json=level_json(parsed.dataset, "series"),
        metadata_json=metadata,
    )
    return stored.row


def _bulk_template(parsed: ParsedInstance) -> dicom_json.BulkDataURIBuilder:
    """BulkDataURIs are stored relative to the DICOMweb base and made absolute when served."""
    prefix = (
        f"studies/{parsed.attr('StudyInstanceUID')}/series/{parsed.attr('SeriesInstanceUID')}"
        f"/instances/{parsed.attr('SOPInstanceUID')}/bulkdata/"
    )

    def uri(tag_path: dicom_json.TagPath) -> str:
        return prefix + dicom_json.tag_path_string(tag_path)

    return uri


def _response(
    ctx: ImagingContext,
    url_study: str | None,
    referenced: list[dict[str, Any]],
    failed: list[dict[str, Any]],
    body_error: str | None,
) -> Response:
    body: dict[str, Any] = {}
    if url_study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{ctx.settings.dicomweb_base}/studies/{url_study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if body_error:
        body["00081196"] = {"vr": "US", "Value": [0xB000]}  # warning: the body ended badly after some parts
    if referenced and not failed and not body_error:
        status = 200
    elif referenced:
        status = 202
    elif any(item.get("00081197", {}).get("Value") in ([STUDY_MISMATCH], [0xA770]) for item in failed):
        status = 409
    else:
        status = 400
    return Response(dicom_json.json_bytes(body), status_code=status, media_type=DICOM_JSON)
