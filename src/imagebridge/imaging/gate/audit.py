"""One audit record per gate decision, committed before any imaging byte leaves (security.md §6).

Every DICOMweb request, allowed or refused, writes one row of the ``audit`` table: time, client,
user (``fhirUser``/``sub``), patient, study/series/instance, operation, outcome, status and a
token id (:func:`~imagebridge.common.tokens.token_id`), never the token (Argonaut SMART Imaging
Access, "Authorization patterns": "Correlate the presented token … without exposing
credentials in logs"; DICOM PS3.15 A.5; AU-01, AU-03). The row is committed before the response
starts; the bytes actually sent are added when a streamed body has finished (AU-06).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from imagebridge.common import db
from imagebridge.common.settings import ImagingSettings
from imagebridge.common.tokens import token_id
from imagebridge.imaging.gate.gate import Access
from imagebridge.imaging.tables import audit, studies


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


#: One INSERT for the records of a commit, their values bound at execution (no statement built
#: per request), returning their ids in the order given.
_INSERT_RETURNING = insert(audit).returning(audit.c.id, sort_by_parameter_order=True)


def operation_of(request: Request) -> str:
    """What the request does, from its route template: store, search, retrieve, metadata, frames…"""
    if request.method == "POST":
        return "store"
    route = request.scope.get("route")
    return _operation(str(getattr(route, "path", request.url.path)))


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


class AuditLog:
    """Writes and reads the imaging system's audit trail."""

    def __init__(self, engine: AsyncEngine, mrn_system: str) -> None:
        self.engine = engine
        self.mrn_system = mrn_system
        #: Set whenever a record is final (the EHR publisher's wakeup).
        self.written = asyncio.Event()
        #: Rows waiting for the next commit, and the task committing them (see :meth:`_insert`).
        self._pending: list[tuple[dict[str, Any], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: The connection the flusher writes on, kept between commits (no checkout and reset each).
        self._writer: AsyncConnection | None = None

    async def record(
        self,
        request: Request,
        access: Access | None,
        response: Response,
        detail: str | None = None,
        *,
        started: float | None = None,
    ) -> Response:
        """Commit the record of this decision, then return ``response`` counting what it sends.

        ``started`` (``time.monotonic()`` when the request reached the gate) gives the record's
        ``elapsed_ms``: how long the decision took, up to this write (FT-01/FT-02 bound).
        """
        params = request.path_params
        streaming = isinstance(response, StreamingResponse)
        study = params.get("study")
        patient = access.info.patient if access else None
        if patient is None and study:
            async with self.engine.connect() as conn:
                found = (
                    await conn.execute(select(studies.c.patient_id).where(studies.c.study_uid == study))
                ).scalar()
            patient = f"{self.mrn_system}|{found}" if found else None
        row_id = await self._insert(
            dict(
                at=time.time(),
                client_id=access.info.client_id if access else None,
                user=access.info.user if access else None,
                patient=patient,
                token_id=access.token_id if access else presented_token_id(request),
                operation=operation_of(request),
                study_uid=study,
                series_uid=params.get("series"),
                sop_uid=params.get("instance"),
                outcome=outcome_of(response.status_code),
                status=response.status_code,
                bytes_sent=0 if streaming else len(response.body),
                request_path=request.url.path[:400],
                detail=detail[:2000] if detail else None,
                streaming=streaming,
                elapsed_ms=(time.monotonic() - started) * 1000 if started is not None else None,
            )
        )
        if isinstance(response, StreamingResponse):
            self._count_stream(response, row_id)
        else:
            self.written.set()
        return response

    async def _insert(self, values: dict[str, Any]) -> int:
        """Insert one row and return its id once it is committed (group commit).

        Rows that arrive while a commit is under way wait for the next one, which writes them all
        in one transaction: concurrent requests share a commit instead of queueing for the
        database's write lock one by one. Each caller still returns only after its own row is
        committed (ARCHITECTURE.md: no imaging byte before a committed audit record).
        """
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((values, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await asyncio.shield(done)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    ids = await self._commit([values for values, _ in batch])
                except Exception as exc:  # each waiting request fails (500), none is answered
                    for _, done in batch:
                        done.set_exception(exc)
                        done.exception()  # retrieved by its waiter, or by nobody if it left
                    continue
                except BaseException:  # cancelled (shutdown): so are the requests waiting on it
                    for _, done in batch + self._pending:
                        done.cancel()
                    raise
                for (_, done), row_id in zip(batch, ids, strict=True):
                    done.set_result(int(row_id))
        finally:
            self._flusher = None

    async def _commit(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert and commit ``rows`` on the writer's warm connection; their ids in order.

        A connection kept from an earlier commit that fails (e.g. closed by the server while
        idle) is dropped and the rows are written once more on a new one.
        """
        reused = self._writer is not None
        try:
            return await self._write(rows)
        except Exception:
            if not reused:
                raise
        return await self._write(rows)

    async def _write(self, rows: list[dict[str, Any]]) -> list[int]:
        if self._writer is None:
            self._writer = await self.engine.connect()
        try:
            async with self._writer.begin():
                result = await self._writer.execute(_INSERT_RETURNING, rows)
                return [int(i) for i in result.scalars().all()]
        except Exception:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Give the writer's connection back (on shutdown, or after it failed)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer.close()

    def _count_stream(self, response: StreamingResponse, row_id: int) -> None:
        sent = 0
        body = response.body_iterator

        async def counted() -> AsyncIterator[Any]:
            nonlocal sent
            async for chunk in body:
                sent += len(chunk)
                yield chunk

        async def store_count() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(audit).where(audit.c.id == row_id).values(bytes_sent=sent, streaming=False)
                )
            self.written.set()

        previous = response.background

        async def after() -> None:
            await store_count()
            if previous is not None:
                await previous()

        response.body_iterator = counted()
        response.background = BackgroundTask(after)

    async def query(
        self, *, since: float | None = None, patient: str | None = None, limit: int = 1000
    ) -> Sequence[AuditRecord]:
        """Records, oldest first, optionally since a time and for one patient."""
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


def report(settings: ImagingSettings, since: str | None, patient: str | None, as_json: bool) -> int:
    """``imagebridge imaging audit``: print the records, one per line (tab-separated or JSON)."""

    async def run() -> Sequence[AuditRecord]:
        engine = db.create_engine(settings.resolved_database_url, pool_size=1)
        try:
            return await AuditLog(engine, settings.mrn_system).query(
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
