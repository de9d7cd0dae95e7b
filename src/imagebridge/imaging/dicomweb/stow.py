"""STOW-RS: ``POST {base}/studies[/{study}]`` (PS3.18 §10.5).

The request body is parsed as it streams in; each part is spooled to disk, checked and parsed in a
worker thread, made durable in the blob store and indexed before it is acknowledged (ARCHITECTURE.md
invariant 5); while a part streams in, up to :data:`IN_FLIGHT` earlier ones are being stored, and
the response, in part order, waits for all of them. One bad part fails on its own with a PS3.18
Failure Reason; the rest of the request is judged part by part. The answer is the Store Instances
Response Module (PS3.18 Annex I) with the status of Table 10.5.3-1: 200 all stored, 202 some stored,
409 none stored because of conflicts (study mismatch, duplicate SOP Instance, no room), 400 none
stored otherwise; 413 for bodies or instances over the configured limits (``Content-Length`` is
judged before reading; a chunked body is cut off when it passes the limit) and 415 for other media
types.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from imagebridge.common.multipart import MultipartError, PartTooLarge, iter_parts
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.archive.ingest import (
    CANNOT_UNDERSTAND,
    CONFLICTS,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    InstanceRejected,
    ParsedInstance,
    SpooledInstance,
    parse,
    spool,
)
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.levels import level_json
from imagebridge.imaging.dicomweb.media import UnsupportedMediaType, parse_stow_content_type
from imagebridge.imaging.dicomweb.uids import is_valid_uid

DICOM_JSON = "application/dicom+json"
log = logging.getLogger(__name__)
#: Status when nothing was stored and every failure is a conflict or a lack of room.
_CONFLICT_LIKE = CONFLICTS | {OUT_OF_RESOURCES}
#: Instances of one request judged, fsynced and indexed while the next part streams in: the
#: fsync and commit waits of consecutive instances overlap instead of adding up.
IN_FLIGHT = 4


class RequestTooLarge(Exception):
    """The request body passed ``max_request_bytes`` while streaming in."""


@dataclass(frozen=True)
class Prepared:
    parsed: ParsedInstance
    metadata_json: bytes
    study_json: bytes
    series_json: bytes


async def _capped(body: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in body:
        total += len(chunk)
        if total > limit:
            raise RequestTooLarge(f"the request body exceeds {limit} bytes")
        yield chunk


def _item(sop_class: str, sop_uid: str, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    item.update(extra)
    return item


def _failure(reason: int, sop_class: str = "", sop_uid: str = "") -> dict[str, Any]:
    return _item(sop_class, sop_uid, **{"00081197": {"vr": "US", "Value": [reason]}})


async def store_instances(ctx: ImagingContext, request: Request, url_study: str | None) -> Response:
    """Store every instance of a STOW-RS request and answer per instance (PS3.18 §10.5.3)."""
    settings = ctx.settings
    if url_study is not None and not is_valid_uid(url_study):
        raise DicomwebError(400, "the Study Instance UID in the URL is not a valid UID")
    try:
        content_type = parse_stow_content_type(request.headers.get("content-type"))
    except UnsupportedMediaType as exc:
        raise DicomwebError(415, str(exc)) from exc
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > settings.max_request_bytes:
        raise DicomwebError(413, f"the request body exceeds {settings.max_request_bytes} bytes")
    # one slot per part, in the request's order: (stored?, response item), None while in flight;
    # parts are spooled in turn while up to IN_FLIGHT earlier ones are judged, fsynced and indexed
    slots: list[tuple[bool, dict[str, Any]] | None] = []
    spool_dir = settings.data_dir / "spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    room = anyio.Semaphore(IN_FLIGHT)
    disconnected = False
    cut: Exception | None = None  # why the body ended early (too large, malformed)

    async def store(slot: int, spooled: SpooledInstance) -> None:
        try:
            row = await _accept(ctx, spooled, url_study)
        except InstanceRejected as exc:
            slots[slot] = (False, _failure(exc.reason, exc.sop_class, exc.sop_instance))
        else:
            item = _item(row.sop_class_uid, row.sop_uid, **{"00081190": _retrieve_url(ctx, row)})
            slots[slot] = (True, item)
        finally:
            room.release()

    async with anyio.create_task_group() as group:
        try:
            async for part in iter_parts(
                _capped(request.stream(), settings.max_request_bytes),
                content_type.boundary.encode("latin-1"),
                max_part_bytes=settings.max_instance_bytes,
            ):
                part_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
                if part_type != "application/dicom":
                    slots.append((False, _failure(CANNOT_UNDERSTAND)))
                    continue
                await room.acquire()
                try:
                    spooled = await spool(part.body, spool_dir)
                except InstanceRejected as exc:
                    room.release()
                    slots.append((False, _failure(exc.reason, exc.sop_class, exc.sop_instance)))
                    continue
                except BaseException:
                    room.release()
                    raise
                slots.append(None)
                group.start_soon(store, len(slots) - 1, spooled)
        except (PartTooLarge, RequestTooLarge, MultipartError) as exc:
            cut = exc
        except ClientDisconnect:
            disconnected = True
        # leaving the group waits for every instance in flight: each is stored or refused whole
    if disconnected:
        # nobody is left to answer; what was stored stays stored, the spool is already clean
        return Response(status_code=400)
    done = [slot for slot in slots if slot is not None]
    if isinstance(cut, (PartTooLarge, RequestTooLarge)):
        if not done:
            raise DicomwebError(413, str(cut)) from cut
        done.append((False, _failure(OUT_OF_RESOURCES)))
    elif cut is not None:
        if not done:
            raise DicomwebError(400, f"malformed multipart body: {cut}") from cut
        done.append((False, _failure(CANNOT_UNDERSTAND)))
    referenced = [item for ok, item in done if ok]
    failed = [item for ok, item in done if not ok]
    if referenced:
        ctx.publisher.wakeup.set()
    return _response(ctx, url_study, referenced, failed)


async def _accept(ctx: ImagingContext, spooled: SpooledInstance, url_study: str | None) -> InstanceRow:
    """Judge, store and index one spooled instance; the spool file is gone afterwards, always."""
    try:
        prepared = await anyio.to_thread.run_sync(_prepare, spooled, ctx.settings.max_inflated_bytes)
        parsed = prepared.parsed
        if url_study is not None and parsed.attr("StudyInstanceUID") != url_study:
            raise InstanceRejected(
                STUDY_MISMATCH,
                "the instance belongs to another study than the URL names",
                parsed.attr("SOPClassUID"),
                parsed.attr("SOPInstanceUID"),
            )
        try:
            await ctx.blobs.put_file(spooled.sha256, spooled.path)
            stored = await ctx.index.add(
                parsed,
                study_json=prepared.study_json,
                series_json=prepared.series_json,
                metadata_json=prepared.metadata_json,
                replace=ctx.settings.stow_overwrite == "replace",
            )
        except InstanceRejected:
            raise
        except OSError as exc:
            no_room = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            log.exception("storing instance %s failed", parsed.attr("SOPInstanceUID"))
            raise InstanceRejected(
                OUT_OF_RESOURCES if no_room else PROCESSING_FAILURE,
                "the instance could not be stored",
                parsed.attr("SOPClassUID"),
                parsed.attr("SOPInstanceUID"),
            ) from exc
        except Exception as exc:
            log.exception("storing instance %s failed", parsed.attr("SOPInstanceUID"))
            raise InstanceRejected(
                PROCESSING_FAILURE,
                "the instance could not be stored",
                parsed.attr("SOPClassUID"),
                parsed.attr("SOPInstanceUID"),
            ) from exc
        return stored.row
    finally:
        await anyio.Path(spooled.path).unlink(missing_ok=True)


def _prepare(spooled: SpooledInstance, max_inflated_bytes: int) -> Prepared:
    """Parse, validate and precompute the metadata of one instance (in a worker thread)."""
    parsed = parse(spooled, max_inflated_bytes)
    try:
        # from the file (up to the pixel data): Pixel Data gets its BulkDataURI (PS3.18 §F.2.7)
        metadata = dicom_json.json_bytes(
            [dicom_json.instance_json_from_file(spooled.path, _bulk_template(parsed))]
        )
        return Prepared(
            parsed, metadata, level_json(parsed.dataset, "study"), level_json(parsed.dataset, "series")
        )
    except (ValueError, TypeError, KeyError, OverflowError, UnicodeError, LookupError) as exc:
        raise InstanceRejected(
            CANNOT_UNDERSTAND,
            f"the data set's values cannot be read: {type(exc).__name__}",
            parsed.attr("SOPClassUID"),
            parsed.attr("SOPInstanceUID"),
        ) from exc


def _retrieve_url(ctx: ImagingContext, row: InstanceRow) -> dict[str, Any]:
    url = (
        f"{ctx.settings.dicomweb_base}/studies/{row.study_uid}/series/{row.series_uid}"
        f"/instances/{row.sop_uid}"
    )
    return {"vr": "UR", "Value": [url]}


def _bulk_template(parsed: ParsedInstance) -> dicom_json.BulkDataURIBuilder:
    """BulkDataURIs are stored relative to the DICOMweb base and made absolute when served."""
    prefix = (
        f"studies/{parsed.attr('StudyInstanceUID')}/series/{parsed.attr('SeriesInstanceUID')}"
        f"/instances/{parsed.attr('SOPInstanceUID')}/bulkdata/"
    )

    def uri(tag_path: dicom_json.TagPath) -> str:
        return prefix + dicom_json.tag_path_string(tag_path)

    return uri


def status_for(referenced: list[dict[str, Any]], failed: list[dict[str, Any]]) -> int:
    """PS3.18 Table 10.5.3-1: 200, 202, 409 (nothing stored, conflicts) or 400."""
    if referenced:
        return 202 if failed else 200
    reasons = {item["00081197"]["Value"][0] for item in failed}
    return 409 if reasons and reasons <= _CONFLICT_LIKE else 400


def _response(
    ctx: ImagingContext,
    url_study: str | None,
    referenced: list[dict[str, Any]],
    failed: list[dict[str, Any]],
) -> Response:
    body: dict[str, Any] = {}
    if url_study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{ctx.settings.dicomweb_base}/studies/{url_study}"]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return Response(
        dicom_json.json_bytes(body), status_code=status_for(referenced, failed), media_type=DICOM_JSON
    )
