"""Durable export jobs run in the background of the EHR process (Bulk Data STU2 "Export").

A job records the authorization it runs under; the runner writes one NDJSON file per resource
type, filtered exactly like a FHIR search by that authorization (the policy engine's SQL twin plus
its per-resource decision). Jobs accepted but never claimed are started at startup; each job is
claimed by exactly one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.fhir.store import DateCriterion, Query, Store, has_token
from imagebridge.ehr.policy.engine import DIRECTORY, PolicyEngine, Principal
from imagebridge.ehr.tables import bulk_files, bulk_jobs, resources

log = logging.getLogger(__name__)
PAGE = 500


@dataclass(frozen=True)
class ExportRequest:
    types: tuple[str, ...]
    since: str | None
    group_members: tuple[str, ...] | None  # Group/[id]/$export: only these patients


@dataclass(frozen=True)
class Job:
    id: str
    client_id: str
    request: str
    status: str
    progress: str
    transaction_time: str
    error: str | None


def principal_json(principal: Principal) -> str:
    return orjson.dumps(
        {
            "client_id": principal.client_id,
            "scope": principal.scopes.to_string(),
            "patient": principal.patient,
            "fhir_user": principal.fhir_user,
            "group_ref": principal.group_ref,
        }
    ).decode()


def _principal(text: str) -> Principal:
    data = orjson.loads(text)
    return Principal(
        client_id=data["client_id"],
        scopes=parse_scopes(data["scope"]),
        patient=data["patient"],
        fhir_user=data["fhir_user"],
        group_ref=data["group_ref"],
    )


class BulkExports:
    """The job table and the background runner."""

    def __init__(self, engine: AsyncEngine, store: Store, policy: PolicyEngine) -> None:
        self.engine = engine
        self.store = store
        self.policy = policy
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(self, principal: Principal, request_url: str, export: ExportRequest, now: str) -> str:
        job_id = uuid.uuid4().hex
        params = {"types": export.types, "since": export.since, "group_members": export.group_members}
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(bulk_jobs).values(
                    id=job_id,
                    client_id=principal.client_id,
                    principal=principal_json(principal),
                    request=request_url,
                    params=orjson.dumps(params).decode(),
                    status="accepted",
                    progress="queued",
                    transaction_time=now,
                    created_at=time.time(),
                )
            )
        self._spawn(job_id)
        return job_id

    def _spawn(self, job_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Restart jobs a previous process left unfinished."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(bulk_jobs.c.id).where(bulk_jobs.c.status.in_(("accepted", "running")))
            )
            for row in rows:
                self._spawn(row.id)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def get(self, job_id: str) -> Job | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(bulk_jobs).where(bulk_jobs.c.id == job_id))).mappings().first()
        if row is None:
            return None
        return Job(
            row["id"],
            row["client_id"],
            row["request"],
            row["status"],
            row["progress"],
            row["transaction_time"],
            row["error"],
        )

    async def files(self, job_id: str) -> list[tuple[str, str, int]]:
        """(name, resource type, count) of a job's output files."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(bulk_files.c.name, bulk_files.c.resource_type, bulk_files.c.count)
                .where(bulk_files.c.job_id == job_id)
                .order_by(bulk_files.c.name)
            )
            return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def file(self, job_id: str, name: str) -> str | None:
        async with self.engine.connect() as conn:
            content = await conn.scalar(
                select(bulk_files.c.content).where(bulk_files.c.job_id == job_id, bulk_files.c.name == name)
            )
        return None if content is None else str(content)

    async def cancel(self, job_id: str) -> None:
        """Cancel (or forget) a job: its files are deleted; later polls answer 404."""
        async with self.engine.begin() as conn:
            await conn.execute(update(bulk_jobs).where(bulk_jobs.c.id == job_id).values(status="cancelled"))
            await conn.execute(delete(bulk_files).where(bulk_files.c.job_id == job_id))

    async def _set(self, job_id: str, **values: Any) -> bool:
        """Update a job unless it was cancelled meanwhile; False when it was."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(bulk_jobs)
                .where(bulk_jobs.c.id == job_id, bulk_jobs.c.status != "cancelled")
                .values(**values)
            )
        return bool(result.rowcount)

    async def _run(self, job_id: str) -> None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(bulk_jobs).where(bulk_jobs.c.id == job_id))).mappings().first()
        if row is None:
            return
        async with self.engine.begin() as conn:  # claim it: one worker runs each job
            claimed = await conn.execute(
                update(bulk_jobs)
                .where(bulk_jobs.c.id == job_id, bulk_jobs.c.status == "accepted")
                .values(status="running")
            )
        if not claimed.rowcount:
            return
        params = orjson.loads(row["params"])
        export = ExportRequest(
            tuple(params["types"]),
            params["since"],
            params["group_members"] and tuple(params["group_members"]),
        )
        try:
            await self._export(job_id, _principal(row["principal"]), export)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job failure is reported in the status, never lost
            log.exception("bulk export %s failed", job_id)
            await self._set(job_id, status="failed", error=f"{type(exc).__name__}")
            return
        await self._set(job_id, status="done", progress="complete")

    async def _export(self, job_id: str, principal: Principal, export: ExportRequest) -> None:
        view = await self.policy.view(principal)
        async with self.engine.begin() as conn:
            await conn.execute(delete(bulk_files).where(bulk_files.c.job_id == job_id))
        for index, resource_type in enumerate(export.types):
            if not await self._set(
                job_id, progress=f"exporting {resource_type} ({index + 1}/{len(export.types)})"
            ):
                return
            scopes = view.scopes_for(resource_type, ("r", "s"))
            restrict = view.sql(resource_type, scopes)
            if export.group_members is not None:
                members = sorted(export.group_members)
                restrict = and_(
                    restrict,
                    resources.c.id.in_(members)
                    if resource_type == "Patient"
                    else has_token("patient", [(None, f"Patient/{m}") for m in members], resource_type)
                    if resource_type not in DIRECTORY
                    else true(),
                )
            criteria = [DateCriterion("_lastUpdated", "gt", export.since)] if export.since else []
            lines: list[bytes] = []
            offset = 0
            while True:
                page, _ = await self.store.search(
                    Query(resource_type, list(criteria), count=PAGE, offset=offset), restrict=restrict
                )
                lines.extend(orjson.dumps(r) for r in page if view.decide(r, scopes).allowed)
                offset += PAGE
                if len(page) < PAGE:
                    break
            if lines:
                async with self.engine.begin() as conn:
                    await conn.execute(
                        insert(bulk_files).values(
                            job_id=job_id,
                            name=f"{resource_type}.ndjson",
                            resource_type=resource_type,
                            count=len(lines),
                            content=(b"\n".join(lines) + b"\n").decode(),
                        )
                    )
