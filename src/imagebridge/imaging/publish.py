"""Publishing studies to the EHR as ImagingStudy resources (ARCHITECTURE.md "Publishing").

When a study arrives or changes, the imaging system upserts it at the EHR with a FHIR
conditional update keyed by its ``urn:dicom:uid`` identifier (FHIR R4 §3.1.0.4.3), shaped by the
Argonaut ``smart-imaging-study`` profile and pointing at one ``smart-wado-endpoint`` Endpoint for
this system's WADO-RS base. The patient is named by identifier (the DICOM PatientID as an MRN);
the EHR reconciles it. A durable queue (the ``publish_queue`` table) makes publishing survive
restarts and EHR outages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from typing import Any, Protocol

from sqlalchemy import bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagebridge.imaging.gate.ehr_client import EhrClient, EhrUnavailable, PublishRefused
from imagebridge.imaging.tables import publish_queue

log = logging.getLogger(__name__)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"  # noqa: S105 (an extension URL)
ENDPOINT_SYSTEM = "urn:imagebridge:wado-rs"
#: DICOM acquisition modalities (PS3.16 CID 29 subset) that belong in ImagingStudy.modality.
NON_ACQUISITION = frozenset({"SR", "KO", "PR", "SEG", "REG", "RTSTRUCT", "RTPLAN", "RTDOSE", "DOC", "OT"})
#: Seconds without a new instance before the publisher sends a study: a study arriving over
#: several requests is published once, complete, not again after every request.
SETTLE = 1.0
#: Seconds a worker holds the studies it took from the queue (their ``leased_until``): the other
#: workers skip them meanwhile, also those queued again, and take them over if it dies holding them.
LEASE = 120.0
#: A worker starts no publication in the last seconds of its lease: one publication (a few HTTP
#: calls, each with a timeout) ends well within them, before another worker may take the study.
LEASE_MARGIN = LEASE / 2
#: A published study leaves the queue unless it was queued again meanwhile (``queued_at`` moved).
_DEQUEUE = delete(publish_queue).where(
    publish_queue.c.study_uid == bindparam("uid"),
    publish_queue.c.queued_at == bindparam("at"),
    publish_queue.c.leased_until == bindparam("lease"),
)
_QUEUED = select(publish_queue.c.study_uid).where(
    publish_queue.c.study_uid.in_(bindparam("uids", expanding=True))
)
_REQUEUE = (
    update(publish_queue)
    .where(publish_queue.c.study_uid.in_(bindparam("uids", expanding=True)))
    .values(queued_at=bindparam("now"))
)


def endpoint_resource(wado_base: str) -> dict[str, Any]:
    """An Endpoint per the Argonaut ``smart-wado-endpoint`` profile."""
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": ENDPOINT_SYSTEM, "value": wado_base}],
        "extension": [{"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True}],
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "dicom-wado-rs",
        },
        "name": "imagebridge WADO-RS",
        "payloadType": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/endpoint-payload-type", "code": "any"}
                ]
            }
        ],
        "payloadMimeType": ["application/dicom"],
        "address": wado_base,
    }


def _started(date: str) -> str | None:
    """FHIR ``started`` from StudyDate; a time is only valid with a timezone, which DICOM often lacks."""
    if len(date) != 8 or not date.isdigit():
        return None
    return f"{date[:4]}-{date[4:6]}-{date[6:]}"


def imaging_study_resource(summary: dict[str, Any], endpoint_ref: str, mrn_system: str) -> dict[str, Any]:
    """An ImagingStudy per the Argonaut ``smart-imaging-study`` profile (FHIR R4 ImagingStudy)."""
    study = summary["study"]
    by_series: dict[str, list[dict[str, Any]]] = {}
    for inst in summary["instances"]:
        by_series.setdefault(inst["series_uid"], []).append(inst)
    series_out = []
    modalities: dict[str, None] = {}
    for s in summary["series"]:
        members = by_series.get(s["series_uid"], [])
        if s["modality"] and s["modality"] not in NON_ACQUISITION:
            modalities[s["modality"]] = None
        entry: dict[str, Any] = {
            "uid": s["series_uid"],
            "modality": {"system": DCM, "code": s["modality"] or "OT"},
            "numberOfInstances": len(members),
            "instance": [
                {
                    "uid": i["sop_uid"],
                    "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{i['sop_class_uid']}"},
                    **({"number": i["instance_number"]} if i["instance_number"] is not None else {}),
                }
                for i in members
            ],
        }
        if s["series_number"] is not None:
            entry["number"] = s["series_number"]
        if s["series_description"]:
            entry["description"] = s["series_description"]
        series_out.append(entry)
    identifiers: list[dict[str, Any]] = [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{study['study_uid']}"}
    ]
    if study["accession_number"]:
        identifiers.append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": study["accession_number"],
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "meta": {
            "profile": ["http://fhir.org/argonaut/smart-imaging/StructureDefinition/smart-imaging-study"]
        },
        "identifier": identifiers,
        "status": "available",
        "subject": {"identifier": {"system": mrn_system, "value": study["patient_id"]}},
        "modality": [{"system": DCM, "code": m} for m in modalities] or [{"system": DCM, "code": "OT"}],
        "numberOfSeries": len(series_out),
        "numberOfInstances": len(summary["instances"]),
        "endpoint": [{"reference": endpoint_ref}],
        "series": series_out,
    }
    started = _started(study["study_date"])
    if started:
        resource["started"] = started
    if study["study_description"]:
        resource["description"] = study["study_description"]
    return resource


async def queue_study(conn: AsyncConnection, study_uid: str, now: float) -> None:
    """Queue a study for publishing in the caller's transaction (again, if already queued: the
    publisher then sends its latest state)."""
    await queue_studies(conn, [study_uid], now)


async def queue_studies(conn: AsyncConnection, study_uids: Collection[str], now: float) -> None:
    """:func:`queue_study` for several studies, in three statements at most."""
    queued = set(await conn.scalars(_QUEUED, {"uids": list(study_uids)}))
    if queued:
        await conn.execute(_REQUEUE, {"uids": list(queued), "now": now})
    new = [{"study_uid": uid, "queued_at": now, "attempts": 0} for uid in study_uids if uid not in queued]
    if new:
        await conn.execute(insert(publish_queue), new)


class SummarySource(Protocol):
    """Where study summaries come from: the archive's index, or the upstream PACS in proxy mode."""

    async def study_summary(self, study_uid: str) -> dict[str, Any] | None: ...


class Publisher:
    """Drains the publish queue into the EHR, retrying with backoff while it is unavailable."""

    def __init__(
        self, engine: AsyncEngine, index: SummarySource, ehr: EhrClient, wado_base: str, mrn_system: str
    ) -> None:
        self.engine = engine
        self.index = index
        self.ehr = ehr
        self.wado_base = wado_base
        self.mrn_system = mrn_system
        self.wakeup = asyncio.Event()
        self._endpoint_ref: str | None = None

    async def run(self) -> None:
        """Publish forever (the app's background task), each study once it has settled."""
        delay = 0.5
        while True:
            self.wakeup.clear()
            try:
                pending = await self.publish_pending(settle=SETTLE)
                delay = 0.5 if not pending else min(delay * 2, 30.0)
            except EhrUnavailable as exc:
                log.warning("publishing deferred: %s", exc)
                delay = min(delay * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=delay)

    async def publish_pending(self, settle: float = 0.0) -> int:
        """Publish once every study queued at least ``settle`` seconds ago; return how many of
        them remain queued (refused by the EHR). The published ones leave the queue together.

        The studies are first leased (one UPDATE that sets their ``leased_until`` :data:`LEASE`
        seconds ahead, only where no other worker's lease is running), so workers sharing the
        queue never publish the same study at once: the database lets one UPDATE take a given row.
        A study queued again while leased (a STOW during its publication) keeps its row, due
        again once this worker releases it. A slow EHR makes the worker stop starting publications
        :data:`LEASE_MARGIN` before its lease ends and release the rest.
        """
        now = time.time()
        cutoff, lease = now - settle, now + LEASE
        free = or_(publish_queue.c.leased_until.is_(None), publish_queue.c.leased_until <= now)
        due = select(publish_queue.c.study_uid).where(publish_queue.c.queued_at <= cutoff, free)
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(publish_queue)
                .where(
                    publish_queue.c.study_uid.in_(due.order_by(publish_queue.c.queued_at).limit(100)),
                    publish_queue.c.queued_at <= cutoff,
                    free,
                )
                .values(leased_until=lease)
                .returning(publish_queue.c.study_uid, publish_queue.c.queued_at)
            )
            queued_at: dict[str, float] = {uid: at for uid, at in taken}
        uids = sorted(queued_at)
        remaining = 0
        published: list[dict[str, Any]] = []
        try:
            for uid in uids:
                if time.time() > lease - LEASE_MARGIN:
                    break  # the rest is released below, due again at once
                try:
                    await self.publish(uid)
                except PublishRefused as exc:
                    remaining += 1
                    await self._failed(uid, str(exc))
                    continue
                published.append({"uid": uid, "at": queued_at[uid], "lease": lease})
        finally:
            # what is still held (queued again meanwhile, or left by an unavailable EHR) is due
            # again once released: at once, or after its settle time if queued again
            if uids:
                async with self.engine.begin() as conn:
                    if published:
                        await conn.execute(_DEQUEUE, published)
                    await conn.execute(
                        update(publish_queue)
                        .where(publish_queue.c.study_uid.in_(uids), publish_queue.c.leased_until == lease)
                        .values(leased_until=None)
                    )
        return remaining

    async def publish(self, study_uid: str) -> None:
        summary = await self.index.study_summary(study_uid)
        if summary is None:
            return
        if self._endpoint_ref is None:
            endpoint = await self.ehr.fhir_put(
                "Endpoint",
                {"identifier": f"{ENDPOINT_SYSTEM}|{self.wado_base}"},
                endpoint_resource(self.wado_base),
            )
            self._endpoint_ref = f"Endpoint/{endpoint['id']}"
        resource = imaging_study_resource(summary, self._endpoint_ref, self.mrn_system)
        await self.ehr.fhir_put(
            "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}, resource
        )

    async def _failed(self, study_uid: str, error: str) -> None:
        log.warning("the EHR refused study publication: %s", error)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(publish_queue)
                .where(publish_queue.c.study_uid == study_uid)
                .values(
                    attempts=publish_queue.c.attempts + 1,
                    last_error=error[:1000],
                    queued_at=time.time() + 60,
                    leased_until=None,
                )
            )
