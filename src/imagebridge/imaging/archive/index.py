"""The SQL index of studies, series and instances (the archive's catalogue).

Instance rows are written only after their blobs are durable, in one transaction with their
study and series rows and the studies' publishing marks (ARCHITECTURE.md invariant 5): a crash
leaves either nothing or complete, retrievable instances. One transaction indexes a whole batch
of a STOW-RS request; each instance of it is still judged on its own (PS3.18 §10.5.3).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import BindParameter

from imagebridge.imaging.archive.ingest import (
    DUPLICATE_SOP_CONFLICT,
    STUDY_MISMATCH,
    InstanceRejected,
    ParsedInstance,
)
from imagebridge.imaging.dicomweb.qido_match import fold_person_name
from imagebridge.imaging.publish import queue_studies
from imagebridge.imaging.tables import instances, series, series_requests, studies

log = logging.getLogger(__name__)

# Statements built once: executing them costs no statement construction or cache-key work.
_UIDS: BindParameter[str] = bindparam("uids", expanding=True)
_KNOWN_INSTANCES = select(instances.c.sop_uid, instances.c.sha256).where(instances.c.sop_uid.in_(_UIDS))
_KNOWN_STUDIES = select(studies.c.study_uid, studies.c.patient_id).where(studies.c.study_uid.in_(_UIDS))
_KNOWN_SERIES = select(series.c.series_uid, series.c.study_uid).where(series.c.series_uid.in_(_UIDS))
_DELETE_INSTANCES = delete(instances).where(instances.c.sop_uid.in_(_UIDS))
_TOUCH_STUDIES = update(studies).where(studies.c.study_uid.in_(_UIDS)).values(updated_at=bindparam("now"))


@dataclass(frozen=True)
class InstanceRow:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int


#: The instances columns of an InstanceRow, in its field order.
_INSTANCE_ROW_COLUMNS = tuple(f.name for f in fields(InstanceRow))


@dataclass(frozen=True)
class Stored:
    row: InstanceRow
    duplicate: bool  # the identical instance was already stored


@dataclass(frozen=True)
class Entry:
    """A parsed instance, its precomputed DICOM JSON (instance, study and series level) and its
    index rows, taken from the data set when the entry is made (in the worker thread that parsed
    it: the transaction then reads no data set)."""

    parsed: ParsedInstance
    metadata_json: bytes
    study_json: bytes
    series_json: bytes
    row: InstanceRow = field(init=False)
    patient_id: str = field(init=False)
    study: dict[str, Any] = field(init=False)  # without ``updated_at``
    series: dict[str, Any] = field(init=False)
    requests: list[dict[str, str]] = field(init=False)
    instance: dict[str, Any] = field(init=False)  # without ``created_at``

    def __post_init__(self) -> None:
        parsed = self.parsed
        row = InstanceRow(
            parsed.attr("StudyInstanceUID"),
            parsed.attr("SeriesInstanceUID"),
            parsed.attr("SOPInstanceUID"),
            parsed.attr("SOPClassUID"),
            parsed.transfer_syntax_uid,
            parsed.spooled.sha256,
            parsed.spooled.size,
        )
        values = {
            "row": row,
            "patient_id": parsed.attr("PatientID")[:64],
            "study": _study_values(self),
            "series": _series_values(self),
            "requests": _request_attributes(parsed, row.series_uid),
            "instance": _instance_values(self),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)


@dataclass
class _Batch:
    """What one transaction knows (rows read, then rows it writes) and will write."""

    known_instances: dict[str, str]  # SOP Instance UID → SHA-256
    known_studies: dict[str, str]  # Study Instance UID → Patient ID
    known_series: dict[str, str]  # Series Instance UID → Study Instance UID
    now: float
    new_studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    touched_studies: set[str] = field(default_factory=set)
    new_series: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    new_instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)


def _text(parsed: ParsedInstance, keyword: str, limit: int) -> str:
    return parsed.attr(keyword)[:limit]


def _request_attributes(parsed: ParsedInstance, series_uid: str) -> list[dict[str, str]]:
    """Request Attributes Sequence items, as QIDO-RS matches them (PS3.18 Table 10.6.1-5)."""
    items = parsed.dataset.get("RequestAttributesSequence") or []
    return [
        {
            "series_uid": series_uid,
            "scheduled_procedure_step_id": str(item.get("ScheduledProcedureStepID", "") or "")[:16],
            "requested_procedure_id": str(item.get("RequestedProcedureID", "") or "")[:16],
        }
        for item in items
    ]


def _study_values(entry: Entry) -> dict[str, Any]:
    parsed = entry.parsed
    return {
        "study_uid": parsed.attr("StudyInstanceUID"),
        "patient_id": parsed.attr("PatientID")[:64],
        "patient_name": _text(parsed, "PatientName", 324),
        "patient_birth_date": _text(parsed, "PatientBirthDate", 8),
        "patient_sex": _text(parsed, "PatientSex", 16),
        "study_date": _text(parsed, "StudyDate", 8),
        "study_time": _text(parsed, "StudyTime", 16),
        "accession_number": _text(parsed, "AccessionNumber", 16),
        "study_id": _text(parsed, "StudyID", 16),
        "study_description": _text(parsed, "StudyDescription", 64),
        "referring_physician_name": _text(parsed, "ReferringPhysicianName", 324),
        "patient_name_fold": fold_person_name(parsed.attr("PatientName"))[:400],
        "referring_physician_name_fold": fold_person_name(parsed.attr("ReferringPhysicianName"))[:400],
        "study_json": entry.study_json,
    }


def _series_values(entry: Entry) -> dict[str, Any]:
    parsed = entry.parsed
    return {
        "series_uid": parsed.attr("SeriesInstanceUID"),
        "study_uid": parsed.attr("StudyInstanceUID"),
        "modality": _text(parsed, "Modality", 16),
        "series_number": parsed.int_attr("SeriesNumber"),
        "series_description": _text(parsed, "SeriesDescription", 64),
        "performed_start_date": _text(parsed, "PerformedProcedureStepStartDate", 8),
        "performed_start_time": _text(parsed, "PerformedProcedureStepStartTime", 16),
        "series_json": entry.series_json,
    }


def _instance_values(entry: Entry) -> dict[str, Any]:
    parsed = entry.parsed
    return {
        "sop_uid": parsed.attr("SOPInstanceUID"),
        "series_uid": parsed.attr("SeriesInstanceUID"),
        "study_uid": parsed.attr("StudyInstanceUID"),
        "sop_class_uid": parsed.attr("SOPClassUID"),
        "instance_number": parsed.int_attr("InstanceNumber"),
        "rows": parsed.int_attr("Rows"),
        "columns": parsed.int_attr("Columns"),
        "bits_allocated": parsed.int_attr("BitsAllocated"),
        "number_of_frames": parsed.int_attr("NumberOfFrames"),
        "transfer_syntax_uid": parsed.transfer_syntax_uid,
        "blob_key": parsed.spooled.sha256,
        "size": parsed.spooled.size,
        "sha256": parsed.spooled.sha256,
        "metadata_json": entry.metadata_json,
    }


def _judge(entry: Entry, batch: _Batch, replace: bool) -> Stored | InstanceRejected:
    """Judge one instance against what the batch knows; if accepted, add its rows to the batch.

    The same SOP Instance UID with other bytes is a :data:`DUPLICATE_SOP_CONFLICT` unless
    ``replace`` lets the new bytes take its place; a Study Instance UID of another patient, or a
    Series Instance UID of another study, is a :data:`STUDY_MISMATCH`.
    """
    row = entry.row
    study_uid, series_uid, sop_uid = row.study_uid, row.series_uid, row.sop_uid
    sop_class, sha256 = row.sop_class_uid, row.blob_key  # a blob's key is the SHA-256 of its bytes
    pending = batch.new_instances.get(sop_uid)
    previous = pending["sha256"] if pending is not None else batch.known_instances.get(sop_uid)
    if previous == sha256:
        return Stored(row, duplicate=True)
    if previous is not None and not replace:
        return InstanceRejected(
            DUPLICATE_SOP_CONFLICT,
            "an instance with this SOP Instance UID and other content exists",
            sop_class,
            sop_uid,
        )
    owner = batch.known_studies.get(study_uid)
    if owner is not None and owner != entry.patient_id:
        return InstanceRejected(
            STUDY_MISMATCH, "this Study Instance UID belongs to another patient", sop_class, sop_uid
        )
    parent = batch.known_series.get(series_uid)
    if parent is not None and parent != study_uid:
        return InstanceRejected(
            STUDY_MISMATCH, "this Series Instance UID belongs to another study", sop_class, sop_uid
        )
    if previous is not None and pending is None:
        # the old blob loses its last reference; the orphan sweep removes it after the grace period
        batch.replaced.add(sop_uid)
    if owner is None:
        batch.new_studies[study_uid] = {**entry.study, "updated_at": batch.now}
        batch.known_studies[study_uid] = entry.patient_id
    elif study_uid not in batch.new_studies:
        batch.touched_studies.add(study_uid)
    if parent is None:
        batch.new_series.append(entry.series)
        batch.requests += entry.requests
        batch.known_series[series_uid] = study_uid
    batch.new_instances[sop_uid] = {**entry.instance, "created_at": batch.now}
    return Stored(row, duplicate=False)


class Index:
    #: Re-judgements after a concurrent writer won a race (one per row an instance may create).
    ATTEMPTS = 5

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer: serializing this process's writers avoids SQLITE_BUSY on upgrade.
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()

    async def add(self, entries: Sequence[Entry], *, replace: bool = False) -> list[Stored | Exception]:
        """Index instances whose blobs (keyed by their SHA-256) are already durable, in one
        transaction; the outcome of each, in order: stored, or why not (an
        :class:`InstanceRejected` judgement, or the error that kept it out of the index).

        When the transaction fails for another reason than a race with a concurrent writer (a
        value the database refuses), every instance is indexed again in a transaction of its own,
        so that only the one at fault fails.
        """
        try:
            return await self._transaction(entries, replace)
        except Exception as exc:
            if len(entries) == 1:
                return [exc]
            log.warning("indexing %d instances together failed, one by one now: %r", len(entries), exc)
        return [(await self.add([entry], replace=replace))[0] for entry in entries]

    async def _transaction(self, entries: Sequence[Entry], replace: bool) -> list[Stored | Exception]:
        for attempt in range(self.ATTEMPTS):
            try:
                lock = self._write_lock if self._sqlite else contextlib.nullcontext()
                async with lock, self.engine.begin() as conn:
                    return await self._write(conn, entries, replace)
            except IntegrityError:
                if attempt == self.ATTEMPTS - 1:
                    raise
                # a concurrent writer inserted the same study, series or instance: judge again
            except OperationalError as exc:
                if not (self._sqlite and "locked" in str(exc)) or attempt == self.ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))  # another process holds SQLite's write lock
        raise AssertionError("unreachable")

    async def _write(
        self, conn: AsyncConnection, entries: Sequence[Entry], replace: bool
    ) -> list[Stored | Exception]:
        async def known(statement: Any, uids: set[str]) -> dict[str, str]:
            return {row[0]: row[1] for row in await conn.execute(statement, {"uids": list(uids)})}

        batch = _Batch(
            await known(_KNOWN_INSTANCES, {entry.row.sop_uid for entry in entries}),
            await known(_KNOWN_STUDIES, {entry.row.study_uid for entry in entries}),
            await known(_KNOWN_SERIES, {entry.row.series_uid for entry in entries}),
            time.time(),
        )
        outcomes: list[Stored | Exception] = [_judge(entry, batch, replace) for entry in entries]
        if batch.replaced:
            await conn.execute(_DELETE_INSTANCES, {"uids": list(batch.replaced)})
        if batch.new_studies:
            await conn.execute(insert(studies), list(batch.new_studies.values()))
        if batch.touched_studies:
            await conn.execute(_TOUCH_STUDIES, {"uids": list(batch.touched_studies), "now": batch.now})
        if batch.new_series:
            await conn.execute(insert(series), batch.new_series)
        if batch.requests:
            await conn.execute(insert(series_requests), batch.requests)
        if batch.new_instances:
            await conn.execute(insert(instances), list(batch.new_instances.values()))
            await queue_studies(conn, {row["study_uid"] for row in batch.new_instances.values()}, batch.now)
        return outcomes

    async def instances_of(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRow]:
        """The instances of a study (optionally one series or one instance), in series/instance order
        (only the columns an :class:`InstanceRow` holds: not the precomputed metadata)."""
        query = (
            select(*(instances.c[name] for name in _INSTANCE_ROW_COLUMNS))
            .join(series, series.c.series_uid == instances.c.series_uid)
            .where(instances.c.study_uid == study_uid)
            .order_by(
                series.c.series_number,
                instances.c.series_uid,
                instances.c.instance_number,
                instances.c.sop_uid,
            )
        )
        if series_uid is not None:
            query = query.where(instances.c.series_uid == series_uid)
        if sop_uid is not None:
            query = query.where(instances.c.sop_uid == sop_uid)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [InstanceRow(*row) for row in rows]

    async def study_summary(self, study_uid: str) -> dict[str, Any] | None:
        """Study row plus its series, for publishing an ImagingStudy."""
        async with self.engine.connect() as conn:
            study = (
                (await conn.execute(select(studies).where(studies.c.study_uid == study_uid)))
                .mappings()
                .first()
            )
            if study is None:
                return None
            series_rows = (
                (
                    await conn.execute(
                        select(series).where(series.c.study_uid == study_uid).order_by(series.c.series_number)
                    )
                )
                .mappings()
                .all()
            )
            instance_rows = (
                (
                    await conn.execute(
                        select(
                            instances.c.series_uid,
                            instances.c.sop_uid,
                            instances.c.sop_class_uid,
                            instances.c.instance_number,
                        )
                        .where(instances.c.study_uid == study_uid)
                        .order_by(instances.c.instance_number, instances.c.sop_uid)
                    )
                )
                .mappings()
                .all()
            )
        return {
            "study": dict(study),
            "series": [dict(s) for s in series_rows],
            "instances": [dict(i) for i in instance_rows],
        }
