"""One audit record per gate decision, journaled before any imaging byte leaves (security.md §6).

Every DICOMweb request, allowed or refused, writes one row of the ``audit`` table: time, client,
user (``fhirUser``/``sub``), patient, study/series/instance, operation, outcome, status and a
token id (:func:`~imagebridge.common.tokens.token_id`), never the token (Argonaut SMART Imaging
Access, "Authorization patterns": "Correlate the presented token … without exposing
credentials in logs"; DICOM PS3.15 A.5; AU-01, AU-03). The record is appended to the audit
journal (:mod:`imagebridge.common.audit_journal`) before the response starts, so a killed process
loses none, and committed to the table by a background writer moments later; the bytes actually
sent are journaled when a streamed body has finished (AU-06). Readers settle the journal first.

A record says what the client got. With ``audit_fsync`` on, a request whose record cannot be made
durable is answered 503, and its record, still only in memory, becomes ``unavailable``/503 with
the decision in ``detail`` before it is written again and committed (:func:`refused_record`; the
journal's docstring says which records cannot be amended). A record that could not be written at
all is not recorded: nothing was served.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Insert, Select, bindparam, case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagebridge.common import db
from imagebridge.common.audit_journal import Entry, Journal, Origin
from imagebridge.common.settings import ImagingSettings
from imagebridge.common.sliding_window import Limiter
from imagebridge.common.splice import SplicedResponse
from imagebridge.common.tokens import token_id
from imagebridge.imaging.gate.gate import Access
from imagebridge.imaging.tables import audit, studies

#: Where an imaging system keeps its audit journal, under its data directory.
JOURNAL_DIR = "audit-journal"


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    client_id: str | None
    user: str | None
    patient: str | None
    token_id: str | None
    operation: str
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    outcome: str
    status: int
    bytes_sent: int
    request_path: str | None
    detail: str | None
    elapsed_ms: float | None


def outcome_of(status: int) -> str:
    """``allow`` (2xx/3xx), ``deny`` (401/403/404), ``unavailable`` (503) or ``error``."""
    if status < 400:
        return "allow"
    if status in (401, 403, 404):
        return "deny"
    return "unavailable" if status == 503 else "error"


#: ``detail`` of the record of a request answered 503 because its record could not be made durable.
UNDURABLE = "answered 503: the audit record could not be made durable"


def refused_record(entry: Entry) -> Entry:
    """``entry``'s record once its request is answered 503 instead (the journal could not make it
    durable): what the client got, with what had been decided in ``detail``. A streamed body's
    count and a Security Alert (about earlier refusals) stay as they are."""
    if "record_key" not in entry or entry["operation"] == "security-alert":
        return entry
    detail = f"{UNDURABLE} (decided: {entry['outcome']} {entry['status']})"
    return {
        **entry,
        "outcome": outcome_of(503),
        "status": 503,
        "bytes_sent": 0,
        "streaming": False,
        "detail": f"{detail}; {entry['detail']}"[:2000] if entry["detail"] else detail,
    }


#: A streamed body's final count, by record key (one executemany per commit).
_SENT = (
    update(audit)
    .where(audit.c.record_key == bindparam("key"))
    .values(bytes_sent=bindparam("sent"), streaming=False)
)


@functools.cache
def _insert_records(dialect: str) -> Insert:
    """Insert records; one already there is kept, unless it is an unfinished stream and this
    record of it is final (then it takes the final count), or this record says its request was
    answered 503 instead (:func:`refused_record`; another process settling the journal committed
    it before it was amended): then it takes what this one says."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(audit)
    new = insert.excluded
    refused = new.detail.startswith(UNDURABLE, autoescape=True)
    return insert.on_conflict_do_update(
        index_elements=["record_key"],
        set_={
            "bytes_sent": new.bytes_sent,
            "streaming": False,
            **{c: case((refused, new[c]), else_=audit.c[c]) for c in ("outcome", "status", "detail")},
        },
        where=(audit.c.streaming.is_(True) & new.streaming.is_(False)) | refused,
    )


def operation_of(request: Request) -> str:
    """What the request does, from its route template: store, search, retrieve, metadata, frames…"""
    if request.method == "POST":
        return "store"
    route = request.scope.get("route")
    return _operation(str(getattr(route, "path", None) or _path(request)))


def _path(request: Request) -> str:
    """The request's path (ASGI ``path``, decoded), without building the whole URL."""
    return str(request.scope["path"])


@functools.lru_cache(maxsize=256)
def _operation(template: str) -> str:
    literal = [seg for seg in template.split("/") if seg and not seg.startswith("{")]
    last = template.rstrip("/").rsplit("/", 1)[-1]
    if last.startswith("{"):
        return "retrieve" if last in ("{study}", "{series}", "{instance}") else literal[-1]
    return "search" if last in ("studies", "series", "instances") else last


def presented_token_id(request: Request) -> str | None:
    """The id of the bearer token the request presented, well-formed or not (never the token)."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token_id(token.strip()) if scheme.lower() == "bearer" and token.strip() else None


#: Refusals (401, 403, 404) per token or per address within :data:`ALERT_WINDOW` seconds that
#: raise a Security Alert record (security.md AU-02).
ALERT_REFUSALS = 20
ALERT_WINDOW = 60.0


class AuditLog:
    """Writes and reads the imaging system's audit trail."""

    def __init__(
        self, engine: AsyncEngine, mrn_system: str, journal_dir: Path, *, fsync: bool = False
    ) -> None:
        self.engine = engine
        self.mrn_system = mrn_system
        #: Set whenever a record becomes final and again once it is committed: the EHR publisher
        #: waits for a quiet moment (no new record) before reading the committed ones.
        self.written = asyncio.Event()
        self.journal = Journal(journal_dir, self._commit, fsync=fsync, refused=refused_record)
        self.refusals = Limiter(limit=ALERT_REFUSALS, window=ALERT_WINDOW)

    async def start(self) -> None:
        """Commit what ended processes journaled and never committed (at startup, then periodically)."""
        await self.journal.start()

    async def record(
        self,
        request: Request,
        access: Access | None,
        response: Response,
        detail: str | None = None,
        *,
        started: float | None = None,
    ) -> Response:
        """Journal the record of this decision, then return ``response`` counting what it sends.

        ``started`` (``time.monotonic()`` when the request reached the gate) gives the record's
        ``elapsed_ms``: how long the decision took, up to this write (FT-01/FT-02 bound). A
        record without a patient (a token without patient context) gets the study's patient
        when it is committed.
        """
        params = request.path_params
        head = request.method == "HEAD"  # RFC 9110 §9.3.2: the answer carries no content
        streaming = isinstance(response, StreamingResponse) and not head
        key = os.urandom(16).hex()
        entry = dict(
            record_key=key,
            at=time.time(),
            client_id=access.info.client_id if access else None,
            user=access.info.user if access else None,
            patient=access.info.patient if access else None,
            token_id=access.token_id if access else presented_token_id(request),
            operation=operation_of(request),
            study_uid=params.get("study"),
            series_uid=params.get("series"),
            sop_uid=params.get("instance"),
            outcome=outcome_of(response.status_code),
            status=response.status_code,
            bytes_sent=0 if streaming or head else len(response.body),
            request_path=_path(request)[:400],
            detail=detail[:2000] if detail else None,
            streaming=streaming,
            elapsed_ms=(time.monotonic() - started) * 1000 if started is not None else None,
        )
        self.journal.append(entry)
        if entry["outcome"] == "deny":
            self._watch_refusals(request, entry)
        if streaming:
            self._count_stream(cast(StreamingResponse, response), key)
        else:
            self.written.set()
        return response

    def _watch_refusals(self, request: Request, refused: Entry) -> None:
        """security.md AU-02 (cross-patient probes, ISO-06): the refusal that makes
        :data:`ALERT_REFUSALS` within :data:`ALERT_WINDOW` seconds for one token or one address
        journals a ``security-alert`` record too (published as DCM 110113), once per burst."""
        address = request.client.host if request.client else "-"
        nobody = dict.fromkeys(("client_id", "user", "patient", "token_id"))
        keys: list[tuple[str, str, Entry]] = [(f"address {address}", "this address", nobody)]
        if refused["token_id"]:
            keys.insert(0, (f"token {refused['token_id']}", "this token", {}))
        for key, what, who in keys:
            if self.refusals.count(key):
                detail = f"{ALERT_REFUSALS} refused requests within {ALERT_WINDOW:.0f} s from {what}"
                self.journal.append(
                    {
                        **refused,
                        **who,  # an address's alert belongs to no one token
                        "record_key": os.urandom(16).hex(),
                        "operation": "security-alert",
                        "detail": detail,
                        "bytes_sent": 0,
                        "streaming": False,
                    }
                )

    async def _commit(self, entries: Sequence[Entry], _: Origin) -> None:
        """Insert the journaled records (each once) and apply the streamed-body counts, in one commit.

        A count always follows its record in the journal. A count in the same batch as its record
        (the usual case: the body ends moments after the record) goes into the row as inserted,
        final; a row already there unfinished (another process replayed the record before the
        count was journaled) takes it on conflict. A count whose record came in an earlier batch
        updates the row. A record found twice (a rewrite whose supersede line a power loss tore,
        common/audit_journal.py) is inserted once, as its later copy: the one saying what the client got.
        """
        counts = {e["key"]: e["sent"] for e in entries if "key" in e and "sent" in e}
        records = {e["record_key"]: e for e in entries if "record_key" in e}
        rows = [
            {**e, "bytes_sent": counts.pop(e["record_key"]), "streaming": False}
            if e.get("streaming") and e["record_key"] in counts
            else e
            for e in records.values()
        ]
        sent = [{"key": key, "sent": count} for key, count in counts.items()]
        async with self.engine.begin() as conn:
            unplaced = {r["study_uid"] for r in rows if r["patient"] is None and r["study_uid"]}
            if unplaced:
                found = await conn.execute(
                    select(studies.c.study_uid, studies.c.patient_id).where(studies.c.study_uid.in_(unplaced))
                )
                placed = {uid: f"{self.mrn_system}|{mrn}" for uid, mrn in found if mrn}
                rows = [{**r, "patient": r["patient"] or placed.get(r["study_uid"])} for r in rows]
            if rows:
                await conn.execute(_insert_records(conn.dialect.name), rows)
            if sent:
                await conn.execute(_SENT, sent)
        if sent or any(not r["streaming"] for r in rows):
            self.written.set()

    async def settle(self) -> None:
        """Commit every record journaled so far by any process sharing the journal (before reading)."""
        await self.journal.settle()

    async def aclose(self) -> None:
        """Commit what is journaled and retire this process's journal (on shutdown)."""
        await self.journal.aclose()

    def _count_stream(self, response: StreamingResponse, key: str) -> None:
        sent = 0
        body = response.body_iterator

        async def counted() -> AsyncIterator[Any]:
            nonlocal sent
            async for chunk in body:
                sent += len(chunk)
                yield chunk

        previous = response.background

        async def after() -> None:
            spliced = response.sent if isinstance(response, SplicedResponse) else 0
            self.journal.append({"key": key, "sent": sent + spliced})
            self.written.set()
            if previous is not None:
                await previous()

        response.body_iterator = counted()
        response.background = BackgroundTask(after)

    async def query(
        self, *, since: float | None = None, patient: str | None = None, limit: int = 1000
    ) -> Sequence[AuditRecord]:
        """Records, oldest first, optionally since a time and for one patient (journal settled first)."""
        await self.settle()
        stmt = select(audit).order_by(audit.c.id).limit(limit)
        if since is not None:
            stmt = stmt.where(audit.c.at >= since)
        if patient is not None:
            stmt = stmt.where(audit.c.patient == patient)
        return await fetch_records(self.engine, stmt)


async def fetch_records(engine: AsyncEngine, stmt: Select[Any]) -> list[AuditRecord]:
    """The audit rows ``stmt`` selects, as records."""
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return [AuditRecord(**{k: row[k] for k in AuditRecord.__dataclass_fields__}) for row in rows]


def parse_since(value: str) -> float:
    """An ISO 8601 date or date-time (UTC when no offset is given) as epoch seconds."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def reader(engine: AsyncEngine, settings: ImagingSettings) -> AuditLog:
    """An audit log for reading the records of the imaging processes sharing ``settings.data_dir``."""
    return AuditLog(engine, settings.mrn_system, settings.data_dir / JOURNAL_DIR)


def settle_journal(settings: ImagingSettings) -> None:
    """Commit every record the imaging processes sharing ``settings.data_dir`` have journaled
    (for a reader outside them: a report, a test reading the table)."""

    async def run() -> None:
        engine = db.create_engine(settings.resolved_database_url, pool_size=1)
        try:
            await reader(engine, settings).settle()
        finally:
            await engine.dispose()

    asyncio.run(run())


def report(settings: ImagingSettings, since: str | None, patient: str | None, as_json: bool) -> int:
    """``imagebridge imaging audit``: print the records, one per line (tab-separated or JSON)."""

    async def run() -> Sequence[AuditRecord]:
        engine = db.create_engine(settings.resolved_database_url, pool_size=1)
        try:
            return await reader(engine, settings).query(
                since=parse_since(since) if since else None, patient=patient, limit=1_000_000
            )
        finally:
            await engine.dispose()

    for record in asyncio.run(run()):
        at = datetime.fromtimestamp(record.at, UTC).isoformat(timespec="milliseconds")
        if as_json:
            print(json.dumps({**asdict(record), "at": at}))
        else:
            fields = (at, record.outcome, record.status, record.operation, record.client_id, record.user)
            more = (record.patient, record.study_uid, record.series_uid, record.sop_uid, record.bytes_sent)
            print("\t".join("" if v is None else str(v) for v in (*fields, *more, record.token_id)))
    return 0
