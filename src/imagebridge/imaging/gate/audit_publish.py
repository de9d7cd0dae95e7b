"""The imaging audit trail published to the EHR as FHIR AuditEvents (security.md AU-06, AU-07).

The ``audit`` table is the durable spool: a record is published once it is final (a streamed
body has finished, or was abandoned long enough ago) and marked ``published`` only after the EHR
accepted it, so an EHR outage delays records and loses none. Each record becomes one
AuditEvent, shaped as an IHE BALP event for a DICOMweb access (DICOM PS3.15 A.5 event codes, the
DICOMweb operation as subtype); up to :data:`BATCH` of them go to the EHR in one ``batch``
Bundle (``POST [base]``, FHIR R4 §3.1.0.11) with this system's own Backend Services token
(``system/AuditEvent.c``). The record's id goes into the event as an identifier and into its
entry's ``ifNoneExist`` (FHIR R4 §3.1.0.8), so an EHR that honors conditional create keeps one
copy when a retry follows a lost response.

Several worker processes share one database: a lease (``leases`` table) lets one publisher drain
at a time; the others wait for it to lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common import balp
from imagebridge.common.balp import DCM
from imagebridge.imaging.gate.audit import AuditRecord, fetch_records
from imagebridge.imaging.gate.ehr_client import EhrClient, EhrUnavailable, PublishRefused
from imagebridge.imaging.tables import audit, leases

log = logging.getLogger(__name__)

#: Identifier system of a published imaging audit record: ``<imaging client_id>/<row id>``.
RECORD_SYSTEM = "urn:imagebridge:imaging-audit"
OPERATION_SYSTEM = "urn:imagebridge:dicomweb-operation"
LEASE = "audit-publisher"
LEASE_SECONDS = 30.0
#: Seconds between looks at the spool when idle (another worker's records do not wake this one).
IDLE_POLL = 2.0
#: After a wakeup the publisher waits for QUIET seconds without a new record, at most SETTLE_MAX.
QUIET = 0.25
SETTLE_MAX = 2.0
#: Backoff while the EHR is unavailable or refuses: from RETRY_FIRST doubling up to RETRY_MAX seconds.
RETRY_FIRST = 1.0
RETRY_MAX = 30.0
#: Records per ``batch`` Bundle (one EHR request).
BATCH = 100
#: Seconds the EHR may take to answer one Bundle: well within the lease's renewal margin
#: (half of LEASE_SECONDS), so another worker does not take over while it is being answered.
BATCH_TIMEOUT = 10.0
#: A Bundle answered with one of these: the EHR has no batch interaction at ``POST [base]``.
NO_BATCH = frozenset({404, 405, 501})
#: A streamed response whose end was never recorded (client gone) is published after this long.
ABANDONED_STREAM_SECONDS = 600.0


def _event_type(operation: str) -> tuple[dict[str, str], str]:
    """DICOM PS3.15 A.5.3 event and FHIR action: Query (E), Instances Transferred in (C), Accessed
    (R), Security Alert (E)."""
    if operation == "search":
        return {"system": DCM, "code": "110112", "display": "Query"}, "E"
    if operation == "store":
        return {"system": DCM, "code": "110104", "display": "DICOM Instances Transferred"}, "C"
    if operation == "security-alert":
        return {"system": DCM, "code": "110113", "display": "Security Alert"}, "E"
    return {"system": DCM, "code": "110103", "display": "DICOM Instances Accessed"}, "R"


def _outcome(record: AuditRecord) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure (503, errors)."""
    if record.outcome == "allow":
        return "0"
    return "4" if record.outcome == "deny" else "8"


def _patient(patient: str, mrn_system: str) -> dict[str, Any]:
    """The audit row names the patient as a FHIR id (from the token) or ``system|MRN`` (from the study)."""
    system, bar, value = patient.partition("|")
    if bar:
        return {"identifier": {"system": system or mrn_system, "value": value}}
    return {"reference": f"Patient/{patient}"}


def record_key(client_id: str, record: AuditRecord) -> str:
    return f"{client_id}/{record.id}"


def audit_event(record: AuditRecord, *, client_id: str, source: str, mrn_system: str) -> dict[str, Any]:
    """One IHE BALP-shaped AuditEvent (FHIR R4) for one imaging audit record."""
    event_type, action = _event_type(record.operation)
    entities = [
        balp.entity(
            {"identifier": {"system": RECORD_SYSTEM, "value": record_key(client_id, record)}},
            balp.SECURITY_RESOURCE,
        )
    ]
    if record.patient:
        entities.append(balp.entity(_patient(record.patient, mrn_system), balp.PATIENT))
    if record.study_uid:
        study = balp.entity(
            {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{record.study_uid}"}},
            balp.RESOURCE,
        )
        details = [("SeriesInstanceUID", record.series_uid), ("SOPInstanceUID", record.sop_uid)]
        study["detail"] = [{"type": t, "valueString": v} for t, v in details if v]
        if not study["detail"]:
            del study["detail"]
        entities.append(study)
    request = balp.entity({"display": record.request_path or ""}, balp.QUERY)
    request["detail"] = [
        {"type": "status", "valueString": str(record.status)},
        {"type": "bytes", "valueString": str(record.bytes_sent)},
    ]
    entities.append(request)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": event_type,
        "subtype": [{"system": OPERATION_SYSTEM, "code": record.operation}],
        "action": action,
        "recorded": datetime.fromtimestamp(record.at, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "outcome": _outcome(record),
        "agent": balp.agents(record.client_id, record.token_id, record.user),
        "source": balp.source("imagebridge imaging", source),
        "entity": entities,
    }
    if record.detail:
        event["outcomeDesc"] = record.detail[:2000]
    return event


def _status(answer: dict[str, Any]) -> int:
    """The HTTP code of a ``Bundle.entry.response.status`` ("201 Created"); 0 when unusable."""
    code = str(answer.get("status", ""))[:3]
    return int(code) if code.isdigit() else 0


class AuditPublisher:
    """Drains unpublished audit records into the EHR, oldest first, while holding the lease (a
    record whose entry failed is sent again in the next Bundle, after later ones were accepted)."""

    def __init__(
        self,
        engine: AsyncEngine,
        ehr: EhrClient,
        *,
        source: str,
        mrn_system: str,
        written: asyncio.Event,
    ) -> None:
        self.engine = engine
        self.ehr = ehr
        self.source = source
        self.mrn_system = mrn_system
        self.written = written
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        #: Until when this process holds the lease, as it last wrote it (0: not held).
        self._lease_until = 0.0
        #: False once the EHR refused a Bundle as having no batch interaction.
        self.batches = True

    async def run(self) -> None:
        """Publish forever (the app's background task), backing off while the EHR is unavailable."""
        delay = RETRY_FIRST
        while True:
            self.written.clear()
            try:
                await self.drain()
            except (EhrUnavailable, PublishRefused) as exc:
                log.warning("audit publication to the EHR deferred %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)  # new records do not hasten a retry against a failing EHR
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.written.wait(), timeout=IDLE_POLL)
                await self._settle()

    async def _settle(self) -> None:
        """Wait until no record was written for :data:`QUIET` seconds (at most :data:`SETTLE_MAX`).

        A viewer's burst of requests then finishes without the publisher's EHR round trips and
        commits competing with it, and its records go in one drain (one lease look, one read,
        one commit). The spool is already durable: this only delays the EHR's copy.
        """
        deadline = time.monotonic() + SETTLE_MAX
        while (left := deadline - time.monotonic()) > 0:
            self.written.clear()
            try:
                await asyncio.wait_for(self.written.wait(), timeout=min(QUIET, left))
            except TimeoutError:
                return

    async def drain(self) -> int:
        """Publish every final, unpublished record while this process holds the lease; return how many.

        Up to :data:`BATCH` records go in one ``batch`` Bundle (FHIR R4 §3.1.0.11), each entry a
        conditional create on the record's identifier. Records whose entry the EHR stored (or
        already had) are marked published; a failed entry stays in the spool, and the first
        failure is raised once the others are marked (a 4xx as :class:`PublishRefused`, anything
        else as :class:`EhrUnavailable`), so :meth:`run` backs off and retries it.

        An EHR without the batch interaction (the Bundle itself answered with a status of
        :data:`NO_BATCH`) gets one ``POST [base]/AuditEvent`` with ``If-None-Exist`` per record
        from then on (until this process restarts).
        """
        published = 0
        while True:
            if await self._lease() is None:
                return published
            batch = await self._batch()
            if not batch:
                return published
            answers = await self._send(batch)
            if answers is None:
                continue  # the EHR has no batch interaction: read again, one record at a time
            done = [r.id for r, a in zip(batch, answers, strict=True) if _status(a) // 100 == 2]
            # One commit for the records the EHR accepted (a crash before it re-sends them, and
            # If-None-Exist keeps one copy each).
            if done:
                async with self.engine.begin() as conn:
                    await conn.execute(update(audit).where(audit.c.id.in_(done)).values(published=True))
            published += len(done)
            failed = next((a for a in answers if _status(a) // 100 != 2), None)
            if failed is not None:
                status, detail = _status(failed), str(failed.get("outcome", failed))[:500]
                if 400 <= status < 500:
                    raise PublishRefused(status, detail)
                raise EhrUnavailable(
                    f"the EHR answered an audit record with {failed.get('status')!r}: {detail}"
                )

    async def _send(self, batch: list[AuditRecord]) -> list[dict[str, Any]] | None:
        """Each record's ``response`` (FHIR R4 §3.1.0.11): a Bundle's, or a single create's when
        the EHR has no batch interaction (None when that was just found out)."""
        entries = [self._entry(r) for r in batch]
        if not self.batches:
            (entry,) = entries
            await self.ehr.fhir_create("AuditEvent", entry["resource"], entry["request"]["ifNoneExist"])
            return [{"status": "201 Created"}]
        try:
            return await self.ehr.fhir_batch(entries, wait=BATCH_TIMEOUT)
        except PublishRefused as exc:
            if exc.status not in NO_BATCH:
                raise
            log.warning("the EHR refused a batch Bundle (%s): audit records go one POST each", exc)
            self.batches = False
            return None

    def _entry(self, record: AuditRecord) -> dict[str, Any]:
        """The batch entry publishing ``record``: a create unless its identifier is already there."""
        key = record_key(self.ehr.client_id, record)
        event = audit_event(
            record, client_id=self.ehr.client_id, source=self.source, mrn_system=self.mrn_system
        )
        condition = f"entity:identifier={RECORD_SYSTEM}|{key}"
        return {
            "resource": event,
            "request": {"method": "POST", "url": "AuditEvent", "ifNoneExist": condition},
        }

    async def _batch(self) -> list[AuditRecord]:
        final = or_(audit.c.streaming.is_(False), audit.c.at < time.time() - ABANDONED_STREAM_SECONDS)
        stmt = (
            select(audit)
            .where(audit.c.published.is_(False), final)
            .order_by(audit.c.id)
            .limit(BATCH if self.batches else 1)
        )
        return await fetch_records(self.engine, stmt)

    async def _lease(self) -> float | None:
        """Take or renew the publisher lease; its expiry, or None while another process holds it.

        A lease this process holds with more than half its time left is kept as is (no write).
        """
        now = time.time()
        if self._lease_until - now > LEASE_SECONDS / 2:
            return self._lease_until
        until = now + LEASE_SECONDS
        async with self.engine.begin() as conn:
            taken = await conn.execute(
                update(leases)
                .where(leases.c.name == LEASE, or_(leases.c.holder == self.holder, leases.c.until < now))
                .values(holder=self.holder, until=until)
            )
            if taken.rowcount == 1:
                self._lease_until = until
                return until
            exists = (await conn.execute(select(leases.c.name).where(leases.c.name == LEASE))).first()
        if exists is not None:
            return None
        try:
            async with self.engine.begin() as conn:
                await conn.execute(insert(leases).values(name=LEASE, holder=self.holder, until=until))
        except IntegrityError:
            return None
        self._lease_until = until
        return until
