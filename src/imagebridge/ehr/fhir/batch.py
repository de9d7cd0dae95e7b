"""``POST [base]`` with a ``batch`` Bundle (FHIR R4 §3.1.0.11 "Batch/Transaction").

Each entry is processed on its own, in order, through the same code as the single interaction
(:mod:`imagebridge.ehr.fhir.rest`): the same SMART scope checks, policy, atomic conditional
writes and AuditEvents, so an entry the token may not write fails alone (403 in its response)
while the others are stored. The answer is a ``batch-response`` Bundle with one entry per
request entry, in the same order, each carrying ``response.status`` and, where a resource was
stored, ``location``, ``etag`` and ``lastModified``, or an OperationOutcome where it failed.

The caller's policy view is shared by the entries while the EHR's resource change counter
stands still (:meth:`PolicyEngine.view` with ``data_version``, as reads reuse it): read again before
each entry, so a write of an earlier entry (or of anyone else) that moves it is seen by the next
entry exactly as by the next single request.

Supported entries: ``POST [type]`` (create, conditional with ``request.ifNoneExist``),
``PUT [type]/[id]`` (update) and ``PUT [type]?[criteria]`` (conditional update); a PUT entry
with ``request.ifNoneExist`` fails alone with 400, that element being for creates only (R4
Bundle.entry.request.ifNoneExist, §3.1.0.8 "conditional create"). Other methods fail alone
with 405. A ``transaction`` Bundle is refused whole (400): this server does not apply several
writes atomically. A Bundle that is not a well-formed batch (not JSON, not a Bundle,
another type, an entry without ``request.method`` and ``request.url``, an unknown method) is 400
and nothing in it is written; more entries than ``batch_max_entries`` is 413, as is a body over
the single interactions' size limit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagebridge.ehr import audit
from imagebridge.ehr.bearer import Authenticated
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir import rest
from imagebridge.ehr.fhir.outcome import FhirError, fhir_response, operation_outcome
from imagebridge.ehr.policy.engine import PolicyView

log = logging.getLogger(__name__)

#: Bundle.entry.request.method values (FHIR R4 http-verb); only POST and PUT are processed.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})


@dataclass(frozen=True)
class _Entry:
    """One request entry: its method, the URL's resource type, id and query, and what it sends."""

    method: str
    resource_type: str
    resource_id: str | None
    query: str
    resource: Any
    if_none_exist: str | None


async def batch(request: Request) -> Response:
    """``POST [base]``: process a ``batch`` Bundle's entries one by one (FHIR R4 §3.1.0.11)."""
    ctx, auth, note = await rest.audited_caller(request, audit.BATCH)
    bundle = await rest.read_body(request, "Bundle")
    entries = _entries(bundle, ctx.settings.batch_max_entries, ctx.settings.fhir_base)
    note.audited = False  # each entry is audited as its single interaction would be
    minimal = "return=minimal" in request.headers.get("prefer", "")
    views = _shared_view(ctx, auth)
    answers = [await _answer(ctx, auth, views, note.actor, entry, minimal) for entry in entries]
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": answers})


def _shared_view(ctx: EhrContext, auth: Authenticated) -> rest.Views:
    """The caller's view for each entry: built again only when the resource change counter (bumped
    in the transaction of every FHIR write but AuditEvents, migrations 0003/0004), read before each
    entry, has moved since, or after ``VIEW_SECONDS`` (the rules read the clock)."""

    async def view() -> PolicyView:
        generation = await ctx.memo.generation(ctx.engine)
        version = generation.resources if generation is not None else None
        return await ctx.policy.view(auth.principal, data_version=version)

    return view


def _entries(bundle: dict[str, Any], max_entries: int, fhir_base: str) -> list[_Entry]:
    """The request entries of a well-formed ``batch`` Bundle, or 400/413 before anything is written."""
    kind = bundle.get("type")
    if kind == "transaction":
        raise FhirError(
            400, "not-supported", "only batch Bundles are supported: this server has no transactions"
        )
    if kind != "batch":
        raise FhirError(400, "invalid", f"Bundle.type must be 'batch', not {kind!r}")
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise FhirError(400, "structure", "Bundle.entry must be an array")
    if len(raw) > max_entries:
        raise FhirError(413, "too-costly", f"a batch may hold at most {max_entries} entries")
    return [_entry(i, item, fhir_base) for i, item in enumerate(raw)]


def _entry(index: int, item: Any, fhir_base: str) -> _Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
        raise FhirError(400, "required", f"{where} has no request")
    req = item["request"]
    method, url = req.get("method"), req.get("url")
    if not isinstance(method, str) or method not in METHODS:
        raise FhirError(400, "value", f"{where}.request.method must be one of {', '.join(sorted(METHODS))}")
    if not isinstance(url, str) or not url:
        raise FhirError(400, "required", f"{where}.request.url is missing")
    condition = req.get("ifNoneExist")
    if condition is not None and not isinstance(condition, str):
        raise FhirError(400, "value", f"{where}.request.ifNoneExist must be a string")
    if url.startswith(fhir_base + "/"):
        url = url[len(fhir_base) + 1 :]
    path, _, query = url.partition("?")
    resource_type, _, resource_id = path.strip("/").partition("/")
    return _Entry(method, resource_type, resource_id or None, query, item.get("resource"), condition)


async def _answer(
    ctx: EhrContext,
    auth: Authenticated,
    views: rest.Views,
    actor: audit.Actor | None,
    entry: _Entry,
    minimal: bool,
) -> dict[str, Any]:
    """One entry processed like its single interaction; its ``response`` (and AuditEvents)."""
    note = rest.Note(audit.CREATE if entry.method == "POST" else audit.UPDATE, actor)
    try:
        written = await _write(ctx, auth, views, note, entry)
    except FhirError as exc:
        status, outcome = exc.status, operation_outcome(exc.code, exc.diagnostics)
    except Exception:  # an error of ours: this entry fails, the others still count
        log.exception("unhandled error in a batch entry %s %s", entry.method, entry.resource_type)
        status, outcome = 500, operation_outcome("exception", "internal error")
    else:
        status = 201 if written.created else 200
        rest.journal(ctx, note, status)
        response = {
            "status": _status(status),
            "location": written.location,
            "etag": written.etag,
            "lastModified": written.resource["meta"]["lastUpdated"],
        }
        answer: dict[str, Any] = {"response": response}
        if not minimal:
            answer = {
                "fullUrl": written.location.rsplit("/_history/", 1)[0],
                "resource": written.resource,
                **answer,
            }
        return answer
    rest.journal(ctx, note, status)
    return {"response": {"status": _status(status), "outcome": outcome}}


async def _write(
    ctx: EhrContext, auth: Authenticated, views: rest.Views, note: rest.Note, entry: _Entry
) -> rest.Written:
    if entry.method not in ("POST", "PUT"):
        raise FhirError(405, "not-supported", f"{entry.method} entries are not supported in a batch")
    if entry.resource_type not in rest.SUPPORTED_TYPES:
        raise FhirError(404, "not-supported", f"resource type {entry.resource_type!r} is not supported")
    if entry.method == "PUT" and entry.if_none_exist is not None:
        raise FhirError(
            400,
            "invalid",
            "request.ifNoneExist applies to POST (conditional create) only; "
            "a conditional update puts its search criteria in request.url",
        )

    async def body(resource_type: str) -> dict[str, Any]:
        return dict(rest.typed(entry.resource, resource_type, "the entry's resource"))

    if entry.method == "POST":
        if entry.resource_id is not None or entry.query:
            raise FhirError(400, "invalid", "a POST entry's url is the resource type alone")
        return await rest.create_resource(
            ctx, auth, note, entry.resource_type, body, entry.if_none_exist, views
        )
    if entry.resource_id is not None:
        if entry.query:
            raise FhirError(400, "invalid", "a PUT entry names an id or search criteria, not both")
        return await rest.update_resource(
            ctx, auth, note, entry.resource_type, entry.resource_id, body, views
        )
    criteria = parse_qsl(entry.query, keep_blank_values=True)
    return await rest.conditional_update_resource(ctx, auth, note, entry.resource_type, body, criteria, views)


def _status(code: int) -> str:
    """``Bundle.entry.response.status``: the HTTP code and its reason phrase."""
    return f"{code} {HTTPStatus(code).phrase}"


routes = [Route("/fhir", rest.handle_errors(batch), methods=["POST"])]
