"""Bulk Data STU2 export endpoints: kick-off, status polling, cancel and output files.

``GET [base]/$export``, ``[base]/Patient/$export`` and ``[base]/Group/[id]/$export`` with
``_type``, ``_since`` and ``_outputFormat`` answer ``202`` + ``Content-Location``; polling answers
``202`` with ``Retry-After`` and ``X-Progress`` until the manifest is ready; ``DELETE`` cancels
(later polls are ``404``). Output files require the same client's access token
(``requiresAccessToken: true``). Unknown parameters are a 400 unless ``Prefer: handling=lenient``.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagebridge.ehr import audit
from imagebridge.ehr.bearer import Authenticated, authenticate
from imagebridge.ehr.bulk.jobs import BulkExports, ExportRequest, Job
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.dates import InvalidDate, date_range, now_instant
from imagebridge.ehr.fhir.outcome import FhirError, fhir_response, operation_outcome
from imagebridge.ehr.fhir.rest import SUPPORTED_TYPES, Note, audited_caller, handle_errors
from imagebridge.ehr.policy.engine import subject_patient

NDJSON: Final = "application/fhir+ndjson"
OUTPUT_FORMATS: Final = frozenset({NDJSON, "application/ndjson", "ndjson"})
RETRY_AFTER: Final = "1"


async def _caller(request: Request) -> tuple[EhrContext, BulkExports, Authenticated]:
    """The caller of a kick-off, audited as an export request (security.md AU-01)."""
    ctx, auth, note = await audited_caller(request, audit.EXPORT)
    note.query = f"{request.url.path}?{request.url.query}"
    if "id" in request.path_params:
        note.disclosures = [audit.Disclosure(None, [f"Group/{request.path_params['id']}"])]
    return ctx, request.app.state.bulk, auth


def _types(auth: Authenticated, value: str | None) -> tuple[str, ...]:
    principal = auth.principal
    covered = [
        t
        for t in sorted(SUPPORTED_TYPES)
        if any(principal.scopes.allows(principal.levels, t, i) for i in ("r", "s"))
    ]
    if value is None:
        if not covered:
            raise FhirError(
                403,
                "forbidden",
                "no granted scope covers any resource type",
                {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
            )
        return tuple(covered)
    wanted = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    for resource_type in wanted:
        if resource_type not in SUPPORTED_TYPES:
            raise FhirError(400, "not-supported", f"_type {resource_type!r} is not supported")
        if resource_type not in covered:
            raise FhirError(
                403,
                "forbidden",
                f"the granted scopes do not cover {resource_type}",
                {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
            )
    return wanted


def _parameters(request: Request, auth: Authenticated) -> tuple[tuple[str, ...], str | None]:
    lenient = "handling=lenient" in request.headers.get("prefer", "")
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name in ("_type", "_since", "_outputFormat"):
            if name in values:
                raise FhirError(400, "invalid", f"{name} given more than once")
            values[name] = value
        elif not lenient:
            raise FhirError(400, "not-supported", f"unsupported $export parameter {name!r}")
    output_format = values.get("_outputFormat", NDJSON)
    if output_format not in OUTPUT_FORMATS:
        raise FhirError(400, "not-supported", f"_outputFormat {output_format!r} is not supported")
    since = values.get("_since")
    if since is not None:
        try:
            date_range(since)
        except InvalidDate as exc:
            raise FhirError(400, "invalid", f"_since: {exc}") from exc
    return _types(auth, values.get("_type")), since


async def _kickoff(request: Request, group_members: tuple[str, ...] | None) -> Response:
    ctx, bulk, auth = await _caller(request)
    types, since = _parameters(request, auth)
    # the manifest's ``request``: from the configured origin, never the request's Host (RS-10)
    query = f"?{request.url.query}" if request.url.query else ""
    request_url = f"{ctx.settings.origin}{request.url.path}{query}"
    job_id = await bulk.create(
        auth.principal, request_url, ExportRequest(types, since, group_members), now_instant()
    )
    return fhir_response(
        operation_outcome("informational", "export accepted", severity="information"),
        202,
        {"Content-Location": f"{ctx.settings.fhir_base}/$export-status/{job_id}"},
    )


async def system_export(request: Request) -> Response:
    return await _kickoff(request, None)


async def group_export(request: Request) -> Response:
    ctx, _, auth = await _caller(request)
    group_id = str(request.path_params["id"])
    group = await ctx.store.read("Group", group_id)
    if group is None or auth.principal.group_ref != f"Group/{group_id}":
        raise FhirError(404, "not-found", f"Group/{group_id} is not known")
    members = tuple(
        ref.removeprefix("Patient/")
        for m in group.get("member") or []
        if not m.get("inactive")
        and isinstance(ref := (m.get("entity") or {}).get("reference"), str)
        and ref.startswith("Patient/")
    )
    return await _kickoff(request, members)


async def _own_job(request: Request, kind: audit.Kind | None = None) -> tuple[BulkExports, Job, Note | None]:
    """The caller's job (404 for anyone else's); audited as ``kind`` when given."""
    ctx: EhrContext = request.app.state.ctx
    note: Note | None = None
    if kind is None:
        auth = await authenticate(ctx, request)
    else:
        _, auth, note = await audited_caller(request, kind)
    bulk: BulkExports = request.app.state.bulk
    job = await bulk.get(str(request.path_params["job"]))
    if job is None or job.client_id != auth.principal.client_id or job.status == "cancelled":
        raise FhirError(404, "not-found", "no such export job")
    return bulk, job, note


async def status(request: Request) -> Response:
    bulk, job, _ = await _own_job(request)
    ctx: EhrContext = request.app.state.ctx
    if job.status in ("accepted", "running"):
        return Response(
            status_code=202, headers={"Retry-After": RETRY_AFTER, "X-Progress": job.progress[:99]}
        )
    if job.status == "failed":
        raise FhirError(500, "exception", f"the export failed ({job.error})")
    manifest: dict[str, Any] = {
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": True,
        "output": [
            {"type": rtype, "url": f"{ctx.settings.fhir_base}/$export-file/{job.id}/{name}", "count": count}
            for name, rtype, count in await bulk.files(job.id)
        ],
        "error": [],
    }
    return Response(orjson.dumps(manifest), media_type="application/json")


async def cancel(request: Request) -> Response:
    bulk, job, _ = await _own_job(request)
    await bulk.cancel(job.id)
    return fhir_response(operation_outcome("informational", "export cancelled", severity="information"), 202)


async def output_file(request: Request) -> Response:
    """An output file: the moment of disclosure, audited with one AuditEvent per patient in it."""
    bulk, job, note = await _own_job(request, audit.EXPORT)
    assert note is not None
    note.query = job.request
    name = str(request.path_params["name"])
    content = await bulk.file(job.id, name) if job.status == "done" else None
    if content is None:
        raise FhirError(404, "not-found", "no such export file")
    by_patient: dict[str | None, list[str]] = {}
    for line in content.splitlines():
        resource = orjson.loads(line)
        by_patient.setdefault(subject_patient(resource), []).append(
            f"{resource['resourceType']}/{resource['id']}"
        )
    note.disclosures = [
        audit.Disclosure(patient, refs, why=f"Bulk Data output file {name}")
        for patient, refs in by_patient.items()
    ]
    return Response(content, media_type=NDJSON)


routes = [
    Route("/fhir/$export", handle_errors(system_export), methods=["GET"]),
    Route("/fhir/Patient/$export", handle_errors(system_export), methods=["GET"]),
    Route("/fhir/Group/{id}/$export", handle_errors(group_export), methods=["GET"]),
    Route("/fhir/$export-status/{job}", handle_errors(status), methods=["GET"]),
    Route("/fhir/$export-status/{job}", handle_errors(cancel), methods=["DELETE"]),
    Route("/fhir/$export-file/{job}/{name}", handle_errors(output_file), methods=["GET"]),
]
