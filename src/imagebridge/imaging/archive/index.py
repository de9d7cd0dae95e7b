"""The SQL index of studies, series and instances (the archive's catalogue).

An instance row is written only after its blob is durable, in one transaction with its study
and series rows and the study's publishing mark (ARCHITECTURE.md invariant 5): a crash leaves
either nothing or a complete, retrievable instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagebridge.imaging.archive.ingest import (
    DUPLICATE_SOP_CONFLICT,
    STUDY_MISMATCH,
    InstanceRejected,
    ParsedInstance,
)
from imagebridge.imaging.dicomweb.qido_match import fold_person_name
from imagebridge.imaging.publish import queue_study
from imagebridge.imaging.tables import instances, series, series_requests, studies


@dataclass(frozen=True)
class InstanceRow:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int


@dataclass(frozen=True)
class Stored:
    row: InstanceRow
    duplicate: bool  # the identical instance was already stored


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


class Index:
    #: Re-judgements after a concurrent writer won a race (one per row an instance may create).
    ATTEMPTS = 5

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # SQLite has one writer: serializing this process's writers avoids SQLITE_BUSY on upgrade.
        self._sqlite = engine.dialect.name == "sqlite"
        self._write_lock = asyncio.Lock()

    async def add(
        self,
        parsed: ParsedInstance,
        study_json: bytes,
        series_json: bytes,
        metadata_json: bytes,
        *,
        replace: bool = False,
    ) -> Stored:
        """Index an instance whose blob (keyed by its SHA-256) is already durable.

        The same SOP Instance UID with other bytes is a :data:`DUPLICATE_SOP_CONFLICT` unless
        ``replace`` (the ``stow_overwrite = "replace"`` policy) lets the new bytes take its place.
        """
        for attempt in range(self.ATTEMPTS):
            try:
                lock = self._write_lock if self._sqlite else contextlib.nullcontext()
                async with lock, self.engine.begin() as conn:
                    return await self._add(conn, parsed, study_json, series_json, metadata_json, replace)
            except IntegrityError:
                if attempt == self.ATTEMPTS - 1:
                    raise
                # a concurrent writer inserted the same study, series or instance: judge again
            except OperationalError as exc:
                if not (self._sqlite and "locked" in str(exc)) or attempt == self.ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))  # another process holds SQLite's write lock
        raise AssertionError("unreachable")

    async def _add(
        self,
        conn: AsyncConnection,
        parsed: ParsedInstance,
        study_json: bytes,
        series_json: bytes,
        metadata_json: bytes,
        replace: bool,
    ) -> Stored:
        ds_study = parsed.attr("StudyInstanceUID")
        ds_series = parsed.attr("SeriesInstanceUID")
        sop_uid = parsed.attr("SOPInstanceUID")
        sop_class = parsed.attr("SOPClassUID")
        row = InstanceRow(
            ds_study,
            ds_series,
            sop_uid,
            sop_class,
            parsed.transfer_syntax_uid,
            parsed.spooled.sha256,
            parsed.spooled.size,
        )
        existing = (
            await conn.execute(
                select(instances.c.sha256, instances.c.study_uid).where(instances.c.sop_uid == sop_uid)
            )
        ).first()
        if existing is not None:
            if existing.sha256 == parsed.spooled.sha256:
                return Stored(row, duplicate=True)
            if not replace:
                raise InstanceRejected(
                    DUPLICATE_SOP_CONFLICT,
                    "an instance with this SOP Instance UID and other content exists",
                    sop_class,
                    sop_uid,
                )
            # the old blob loses its last reference; the orphan sweep removes it after the grace period
            await conn.execute(delete(instances).where(instances.c.sop_uid == sop_uid))
        patient_id = parsed.attr("PatientID")
        study = (
            await conn.execute(select(studies.c.patient_id).where(studies.c.study_uid == ds_study))
        ).first()
        now = time.time()
        if study is None:
            await conn.execute(
                insert(studies).values(
                    study_uid=ds_study,
                    patient_id=patient_id[:64],
                    patient_name=_text(parsed, "PatientName", 324),
                    patient_birth_date=_text(parsed, "PatientBirthDate", 8),
                    patient_sex=_text(parsed, "PatientSex", 16),
                    study_date=_text(parsed, "StudyDate", 8),
                    study_time=_text(parsed, "StudyTime", 16),
                    accession_number=_text(parsed, "AccessionNumber", 16),
                    study_id=_text(parsed, "StudyID", 16),
                    study_description=_text(parsed, "StudyDescription", 64),
                    referring_physician_name=_text(parsed, "ReferringPhysicianName", 324),
                    patient_name_fold=fold_person_name(parsed.attr("PatientName"))[:400],
                    referring_physician_name_fold=fold_person_name(parsed.attr("ReferringPhysicianName"))[
                        :400
                    ],
                    study_json=study_json,
                    updated_at=now,
                )
            )
        elif study.patient_id != patient_id[:64]:
            raise InstanceRejected(
                STUDY_MISMATCH, "this Study Instance UID belongs to another patient", sop_class, sop_uid
            )
        else:
            await conn.execute(update(studies).where(studies.c.study_uid == ds_study).values(updated_at=now))
        found_series = (
            await conn.execute(select(series.c.study_uid).where(series.c.series_uid == ds_series))
        ).first()
        if found_series is None:
            await conn.execute(
                insert(series).values(
                    series_uid=ds_series,
                    study_uid=ds_study,
                    modality=_text(parsed, "Modality", 16),
                    series_number=parsed.int_attr("SeriesNumber"),
                    series_description=_text(parsed, "SeriesDescription", 64),
                    performed_start_date=_text(parsed, "PerformedProcedureStepStartDate", 8),
                    performed_start_time=_text(parsed, "PerformedProcedureStepStartTime", 16),
                    series_json=series_json,
                )
            )
            requests = _request_attributes(parsed, ds_series)
            if requests:
                await conn.execute(insert(series_requests), requests)
        elif found_series.study_uid != ds_study:
            raise InstanceRejected(
                STUDY_MISMATCH, "this Series Instance UID belongs to another study", sop_class, sop_uid
            )
        await conn.execute(
            insert(instances).values(
                sop_uid=sop_uid,
                series_uid=ds_series,
                study_uid=ds_study,
                sop_class_uid=sop_class,
                instance_number=parsed.int_attr("InstanceNumber"),
                rows=parsed.int_attr("Rows"),
                columns=parsed.int_attr("Columns"),
                bits_allocated=parsed.int_attr("BitsAllocated"),
                number_of_frames=parsed.int_attr("NumberOfFrames"),
                transfer_syntax_uid=parsed.transfer_syntax_uid,
                blob_key=parsed.spooled.sha256,
                size=parsed.spooled.size,
                sha256=parsed.spooled.sha256,
                metadata_json=metadata_json,
                created_at=now,
            )
        )
        await queue_study(conn, ds_study, now)
        return Stored(row, duplicate=False)

    async def instances_of(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRow]:
        """The instances of a study (optionally one series or one instance), in series/instance order."""
        query = (
            select(instances)
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
            rows = (await conn.execute(query)).mappings().all()
        return [_instance_row(r) for r in rows]

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


def _instance_row(r: Any) -> InstanceRow:
    return InstanceRow(
        study_uid=r["study_uid"],
        series_uid=r["series_uid"],
        sop_uid=r["sop_uid"],
        sop_class_uid=r["sop_class_uid"],
        transfer_syntax_uid=r["transfer_syntax_uid"],
        blob_key=r["blob_key"],
        size=r["size"],
    )
