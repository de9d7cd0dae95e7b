"""STOW-RS: ``POST {base}/studies[/{study}]`` (PS3.18 §10.5).

The request body is parsed as it streams in; each part is spooled to disk, then checked, parsed
once and put in the blob store in a worker thread while the next part streams in (up to
:data:`IN_FLIGHT` at once). Every :data:`BATCH` instances are made durable together (one folder
sync) and indexed in one transaction; only then are they acknowledged (ARCHITECTURE.md invariant
5), and the response, in part order, waits for all of them. One bad part fails on its own with a
PS3.18 Failure Reason, also within a batch; the rest of the request is judged part by part. The
answer is the Store Instances Response Module (PS3.18 Annex I) with the status of Table 10.5.3-1:
200 all stored, 202 some stored, 409 none stored because of conflicts (study mismatch, duplicate
SOP Instance, no room, not authorized), 400 none stored otherwise; 413 for bodies or instances
over the configured limits (``Content-Length`` is judged before reading; a chunked body is cut
off when it passes the limit) and 415 for other media types.

Each instance is stored only if the writer may store imaging for its PatientID, as the EHR
decides (the gate's :meth:`~imagebridge.imaging.gate.gate.Gate.write_check`; security.md ISO-08):
otherwise it fails with 0x0124 "Refused: Not Authorized" before any byte of it is kept. The EHR
unable to decide fails the request (503).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from imagebridge.common.multipart import MultipartError, PartTooLarge, iter_parts
from imagebridge.imaging.archive.blobs import LocalBlobStore
from imagebridge.imaging.archive.index import Entry, InstanceRow, Stored
from imagebridge.imaging.archive.ingest import (
    CANNOT_UNDERSTAND,
    CONFLICTS,
    NOT_AUTHORIZED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    STUDY_MISMATCH,
    UNREADABLE,
    InstanceRejected,
    ParsedInstance,
    Spool,
    parse,
    spool,
)
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.levels import level_json
from imagebridge.imaging.dicomweb.media import UnsupportedMediaType, parse_stow_content_type
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import GateRefusal

DICOM_JSON = "application/dicom+json"
log = logging.getLogger(__name__)
#: Status when nothing was stored and every failure is a conflict, a lack of room or a refusal.
_CONFLICT_LIKE = CONFLICTS | {OUT_OF_RESOURCES, NOT_AUTHORIZED}
#: Whether the writer may store instances with a PatientID (called from a worker thread).
WriteCheck = Callable[[str], bool]
#: Instances of one request judged and put in the blob store while the next part streams in.
IN_FLIGHT = 4
#: Instances of one request made durable and indexed together: one folder sync, one transaction.
BATCH = 32
#: Batches of one request being synced and indexed at once; beyond, the body waits.
BATCHES_IN_FLIGHT = 2

Outcome = tuple[bool, dict[str, Any]]
"""An instance's place in the response: stored?, and its Referenced or Failed SOP item."""


class RequestTooLarge(Exception):
    """The request body passed ``max_request_bytes`` while streaming in."""


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


def _refused(exc: InstanceRejected) -> Outcome:
    return False, _failure(exc.reason, exc.sop_class, exc.sop_instance)


class _Intake:
    """The instances of one request on their way in.

    Each part is judged and put in the blob store as soon as it is spooled (up to
    :data:`IN_FLIGHT` at once, while the next part streams in); every :data:`BATCH` instances
    are then made durable and indexed together, and only then given a Referenced SOP item. The
    outcomes keep the request's part order.
    """

    def __init__(
        self, ctx: ImagingContext, url_study: str | None, allowed: WriteCheck, batches: TaskGroup
    ) -> None:
        self.ctx = ctx
        self.url_study = url_study
        self.allowed = allowed
        #: The gate could not decide a write (the EHR unreachable): the request fails with it.
        self.refusal: GateRefusal | None = None
        self.outcomes: list[Outcome | None] = []  # None while in flight
        self.room = anyio.Semaphore(IN_FLIGHT)
        self._batches = batches
        self._batch_room = anyio.Semaphore(BATCHES_IN_FLIGHT)
        self._pending: list[tuple[int, Entry]] = []

    def refuse(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    async def put(self, slot: int, spooled: Spool) -> None:
        """Judge and put one spooled instance (a task holding one :attr:`room`)."""
        try:
            entry = await _put(self.ctx, spooled, self.url_study, self.allowed)
            self._pending.append((slot, entry))
            if len(self._pending) >= BATCH:
                await self.flush()
        except InstanceRejected as exc:
            self.outcomes[slot] = _refused(exc)
        except GateRefusal as refusal:
            self.refusal = refusal
            self.outcomes[slot] = (False, _failure(PROCESSING_FAILURE))
        finally:
            self.room.release()

    async def flush(self) -> None:
        """Start making the instances put so far durable and indexed (waits while
        :data:`BATCHES_IN_FLIGHT` batches are)."""
        await self._batch_room.acquire()
        batch, self._pending = self._pending, []
        if batch:
            self._batches.start_soon(self._commit, batch)
        else:
            self._batch_room.release()

    async def _commit(self, batch: list[tuple[int, Entry]]) -> None:
        entries = [entry for _, entry in batch]
        try:
            outcomes: list[Stored | Exception]
            try:
                await self.ctx.blobs.sync([entry.parsed.spooled.sha256 for entry in entries])
            except Exception as exc:
                outcomes = [exc] * len(entries)
            else:
                replace = self.ctx.settings.stow_overwrite == "replace"
                outcomes = await self.ctx.index.add(entries, replace=replace)
            for (slot, entry), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Stored):
                    row = outcome.row
                    url = _retrieve_url(self.ctx, row)
                    self.outcomes[slot] = (True, _item(row.sop_class_uid, row.sop_uid, **{"00081190": url}))
                elif isinstance(outcome, InstanceRejected):
                    self.outcomes[slot] = _refused(outcome)
                else:
                    self.outcomes[slot] = _refused(_not_stored(outcome, entry.parsed))
        finally:
            self._batch_room.release()


async def store_instances(
    ctx: ImagingContext, request: Request, url_study: str | None, allowed: WriteCheck
) -> Response:
    """Store every instance of a STOW-RS request whose PatientID the writer is ``allowed`` to
    store for, and answer per instance (PS3.18 §10.5.3)."""
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
    spool_dir = settings.data_dir / "spool"
    spool_dir.mkdir(parents=True, exist_ok=True)
    disconnected = False
    cut: Exception | None = None  # why the body ended early (too large, malformed)
    # leaving each task group waits for its tasks: every instance is then stored or refused whole
    async with anyio.create_task_group() as batches:
        intake = _Intake(ctx, url_study, allowed, batches)
        async with anyio.create_task_group() as puts:
            try:
                async for part in iter_parts(
                    _capped(request.stream(), settings.max_request_bytes),
                    content_type.boundary.encode("latin-1"),
                    max_part_bytes=settings.max_instance_bytes,
                ):
                    if intake.refusal is not None:
                        break  # the EHR cannot decide: 503 now, not after the rest of the body
                    part_type = (part.content_type or "application/dicom").split(";")[0].strip().lower()
                    if part_type != "application/dicom":
                        intake.refuse((False, _failure(CANNOT_UNDERSTAND)))
                        continue
                    await intake.room.acquire()
                    try:
                        spooled = await spool(part.body, spool_dir)
                    except InstanceRejected as exc:
                        intake.room.release()
                        intake.refuse(_refused(exc))
                        continue
                    except BaseException:
                        intake.room.release()
                        raise
                    intake.outcomes.append(None)
                    puts.start_soon(intake.put, len(intake.outcomes) - 1, spooled)
            except (PartTooLarge, RequestTooLarge, MultipartError) as exc:
                cut = exc
            except ClientDisconnect:
                disconnected = True
        await intake.flush()
    if intake.refusal is not None:
        raise intake.refusal
    if disconnected:
        # nobody is left to answer; what was stored stays stored, the spool is already clean
        return Response(status_code=400)
    done = [outcome for outcome in intake.outcomes if outcome is not None]
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


async def _put(ctx: ImagingContext, spooled: Spool, url_study: str | None, allowed: WriteCheck) -> Entry:
    """Judge one spooled instance and put it in the blob store (durable after the batch's sync);
    the spool file is gone afterwards, always (the blob store takes it, or it is removed). A local
    blob store takes it in the same worker-thread hop as the spool's last write and the judging."""
    local = ctx.blobs if isinstance(ctx.blobs, LocalBlobStore) else None
    try:
        entry = await anyio.to_thread.run_sync(
            _take, spooled, ctx.settings.max_inflated_bytes, url_study, allowed, local
        )
        if local is None:
            try:
                await ctx.blobs.put_file(entry.parsed.spooled.sha256, entry.parsed.spooled.path)
            except Exception as exc:
                raise _not_stored(exc, entry.parsed) from exc
        return entry
    except BaseException:
        spooled.discard()  # no await: also when the request is cancelled
        raise


def _take(
    spooled: Spool,
    max_inflated_bytes: int,
    url_study: str | None,
    allowed: WriteCheck,
    local: LocalBlobStore | None,
) -> Entry:
    """Finish the spool file, judge the instance (its study, and whether the writer may store
    for its PatientID: before its metadata is made) and, for a local blob store, put it (in a
    worker thread)."""
    parsed = parse(spooled.finish(), max_inflated_bytes)
    if url_study is not None and parsed.attr("StudyInstanceUID") != url_study:
        raise InstanceRejected(
            STUDY_MISMATCH,
            "the instance belongs to another study than the URL names",
            parsed.attr("SOPClassUID"),
            parsed.attr("SOPInstanceUID"),
        )
    if not allowed(parsed.attr("PatientID")[:64]):
        raise InstanceRejected(
            NOT_AUTHORIZED,
            "the writer may not store instances for this PatientID",
            parsed.attr("SOPClassUID"),
            parsed.attr("SOPInstanceUID"),
        )
    entry = _prepare(parsed)
    if local is not None:
        try:
            local.put_now(parsed.spooled.sha256, parsed.spooled.path)
        except Exception as exc:
            raise _not_stored(exc, parsed) from exc
    return entry


def _not_stored(exc: Exception, parsed: ParsedInstance) -> InstanceRejected:
    """The failure reason for an instance the blob store or the index could not take."""
    log.error("storing instance %s failed", parsed.attr("SOPInstanceUID"), exc_info=exc)
    no_room = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return InstanceRejected(
        OUT_OF_RESOURCES if no_room else PROCESSING_FAILURE,
        "the instance could not be stored",
        parsed.attr("SOPClassUID"),
        parsed.attr("SOPInstanceUID"),
    )


def _prepare(parsed: ParsedInstance) -> Entry:
    """Precompute the metadata and index rows of one parsed instance (in a worker thread)."""
    try:
        # Pixel Data gets its BulkDataURI (PS3.18 §F.2.7) from the element header parse() kept
        ds = parsed.dataset
        instance = dicom_json.instance_json(
            ds, parsed.pixel_elements, _bulk_template(parsed), values=parsed.values
        )
        return Entry(
            parsed,
            dicom_json.json_bytes([instance]),
            level_json(instance, ds, "study"),
            level_json(instance, ds, "series"),
        )
    except UNREADABLE as exc:
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
