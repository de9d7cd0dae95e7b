"""The FHIR R4 RESTful API of the EHR (FHIR R4 §3.1.0): read, search, create, update.

Every interaction is authorized in two steps: the granted SMART scopes must cover the
interaction (otherwise 403 ``insufficient_scope``), then the policy engine decides per resource.
A resource outside the grant is simply absent from results; a search naming a patient outside the
authorization is 403 (Argonaut SMART Imaging Access, "Required token checks").
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imagebridge.common.audit_journal import JournalUnavailable
from imagebridge.common.responses import bearer_challenge
from imagebridge.common.smart_scopes import Interaction, Scope
from imagebridge.common.tokens import token_id
from imagebridge.ehr import audit
from imagebridge.ehr.bearer import Authenticated, Unauthenticated, authenticate, bearer_token
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.capability import capability_statement
from imagebridge.ehr.fhir.outcome import FhirError, fhir_response
from imagebridge.ehr.fhir.search import parse_search
from imagebridge.ehr.fhir.search_params import PARAMS
from imagebridge.ehr.fhir.store import MultipleMatches, ResourceConflict, Store
from imagebridge.ehr.fhir.subjects import resolve_subject
from imagebridge.ehr.fhir.visible import visible
from imagebridge.ehr.policy import constraints
from imagebridge.ehr.policy.engine import PolicyView, subject_patient

MAX_BODY = 8 * 1024 * 1024
SUPPORTED_TYPES = frozenset(PARAMS)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
log = logging.getLogger(__name__)


async def metadata(request: Request) -> Response:
    """The CapabilityStatement (FHIR R4 §3.1.0.8), which any origin may read (ehr/cors.py)."""
    return fhir_response(capability_statement(request.app.state.ctx))


@dataclass
class Note:
    """What the request did, for its AuditEvents (written by :func:`handle_errors`)."""

    kind: audit.Kind
    actor: audit.Actor | None = None
    disclosures: Sequence[audit.Disclosure] | audit.Later = field(default_factory=list)
    query: str | None = None
    #: False when the request is its own record (an AuditEvent added) or its parts are audited
    #: one by one (a batch's entries).
    audited: bool = True


#: Reads the resource a write sends, checked to be of the given type: the request body of a
#: single interaction, or a batch entry's ``resource``.
Body = Callable[[str], Awaitable[dict[str, Any]]]
#: The caller's policy view as a write asks for it, after reading what it replaces: built anew
#: for a single interaction (:func:`fresh_view`), shared by a batch's entries while the EHR's data
#: stands still (batch.py).
Views = Callable[[], Awaitable[PolicyView]]


@dataclass(frozen=True)
class Written:
    """What a create or update stored."""

    resource: dict[str, Any]
    created: bool
    location: str

    @property
    def etag(self) -> str:
        return f'W/"{self.resource["meta"]["versionId"]}"'


async def audited_caller(request: Request, kind: audit.Kind) -> tuple[EhrContext, Authenticated, Note]:
    """The authenticated caller; the request will be audited as ``kind``."""
    ctx, auth, note, _ = await versioned_caller(request, kind)
    return ctx, auth, note


async def versioned_caller(
    request: Request, kind: audit.Kind
) -> tuple[EhrContext, Authenticated, Note, int | None]:
    """:func:`audited_caller`, and the EHR's resource change counter as the request began (for
    :meth:`PolicyEngine.view`)."""
    ctx: EhrContext = request.app.state.ctx
    note = request.state.audit = Note(kind)
    generation = await ctx.memo.generation(ctx.engine)  # before anything it guards is read
    auth = await authenticate(ctx, request, generation)
    if request.path_params.get("type") == "AuditEvent":
        await audit.trail(ctx).flush()  # the report shows every access this process has answered
    token = bearer_token(request)
    note.actor = audit.Actor(
        auth.principal.client_id,
        auth.principal.fhir_user,
        token_id(token) if token else None,
        request.client.host if request.client else None,
    )
    return ctx, auth, note, generation.resources if generation else None


def fresh_view(ctx: EhrContext, auth: Authenticated) -> Views:
    """The caller's view built anew when asked (the single write interactions)."""
    return lambda: ctx.policy.view(auth.principal)


def _require_scope(auth: Authenticated, resource_type: str, interaction: Interaction) -> list[Scope]:
    """The granted scopes covering ``interaction`` (each applied on its own), or 403."""
    scopes = auth.principal.scopes.allows(auth.principal.levels, resource_type, interaction)
    if not scopes:
        raise FhirError(
            403,
            "forbidden",
            f"the granted scopes do not allow '{interaction}' on {resource_type}",
            {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        )
    return scopes


def _resource_type(request: Request) -> str:
    resource_type = str(request.path_params["type"])
    if resource_type not in SUPPORTED_TYPES:
        raise FhirError(404, "not-supported", f"resource type {resource_type!r} is not supported")
    return resource_type


def _not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")


async def read(request: Request) -> Response:
    ctx, auth, note, data_version = await versioned_caller(request, audit.READ)
    resource_type = _resource_type(request)
    scopes = _require_scope(auth, resource_type, "r")
    resource_id = str(request.path_params["id"])
    async with ctx.store.reading() as store:
        resource = await store.read(resource_type, resource_id) if _ID.fullmatch(resource_id) else None
        if resource is None:
            raise _not_found(resource_type, resource_id)
        view = await ctx.policy.view(auth.principal, store, data_version=data_version)
    disclosure = audit.read_disclosure(view, scopes, resource)
    note.disclosures = [disclosure]
    if not disclosure.allowed:
        raise _not_found(resource_type, resource_id)
    return fhir_response(resource, headers={"ETag": f'W/"{resource["meta"]["versionId"]}"'})


async def search(request: Request) -> Response:
    """Search (FHIR R4 §3.1.1); policy and scope constraints are SQL, so totals and pages are exact.

    A ``patient`` outside every patient the scopes reach is 403 (Argonaut IG). A patient-context
    token searching without ``patient`` is restricted to its patient: the policy filter admits
    nothing else.
    """
    ctx, auth, note, data_version = await versioned_caller(request, audit.SEARCH)
    resource_type = _resource_type(request)
    note.query = f"{resource_type}?{request.url.query}"
    scopes = _require_scope(auth, resource_type, "s")
    strict = "handling=strict" in request.headers.get("prefer", "")
    parsed = parse_search(resource_type, request.query_params.multi_items(), strict=strict)
    async with ctx.store.reading() as store:
        view = await ctx.policy.view(auth.principal, store, data_version=data_version)
        if parsed.patient is not None and parsed.patient not in view.patients(scopes):
            note.disclosures = [
                audit.Disclosure(parsed.patient, why="the patient is outside this authorization")
            ]
            raise FhirError(403, "forbidden", "the patient is outside this authorization")
        # where labels or Consents can hide matches, the search counts them too (audit, AU-09)
        rules = audit.hiding(view, scopes, [parsed.patient] if parsed.patient else view.patients(scopes))
        found = await visible(store, view, scopes, parsed.query, count_hidden=bool(rules))
        included = await _included(ctx, store, data_version, parsed.includes, found.page)

    async def disclosures() -> list[audit.Disclosure]:
        """After the response: what was shown, and hidden, per patient."""
        return audit.search_disclosures(view, scopes, parsed.patient, found.page, found.hidden, rules)

    note.disclosures = disclosures
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{ctx.settings.fhir_base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in found.page
    ]
    entries.extend(included)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": found.total,
        "link": _links(ctx, request, resource_type, parsed.query.offset, parsed.query.count, found.total),
        "entry": entries,
    }
    return fhir_response(bundle)


async def _included(
    ctx: EhrContext,
    store: Store,
    data_version: int | None,
    includes: list[str],
    matches: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``_include=ImagingStudy:endpoint``: the referenced Endpoints on the same page (FHIR R4 §3.1.1.5.4),
    remembered by the worker while ``data_version`` stands still (every study names the same few)."""
    refs: dict[tuple[str, str], None] = {}
    for include in includes:
        source, _, param = include.partition(":")
        if (source, param) != ("ImagingStudy", "endpoint"):
            raise FhirError(400, "not-supported", f"_include={include} is not supported")
        for study in matches:
            for ref in study.get("endpoint", []):
                kind, _, rid = str(ref.get("reference", "")).partition("/")
                if kind == "Endpoint" and rid:
                    refs[(kind, rid)] = None
    found = await ctx.memo.included(data_version, list(refs), store.read_many)
    return [
        {
            "fullUrl": f"{ctx.settings.fhir_base}/Endpoint/{e['id']}",
            "resource": e,
            "search": {"mode": "include"},
        }
        for e in found
    ]


def _links(
    ctx: EhrContext, request: Request, resource_type: str, offset: int, count: int, total: int
) -> list[dict[str, str]]:
    base = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_offset",)]

    def url(at: int) -> str:
        return f"{ctx.settings.fhir_base}/{resource_type}?{urlencode([*base, ('_offset', str(at))])}"

    links = [{"relation": "self", "url": url(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": url(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": url(max(0, offset - count))})
    return links


async def read_body(request: Request, resource_type: str) -> dict[str, Any]:
    """The request body: a ``resource_type`` resource in JSON (415, 413, 400 otherwise)."""
    if request.headers.get("content-type", "").split(";")[0].strip() not in (
        "application/fhir+json",
        "application/json",
    ):
        raise FhirError(415, "not-supported", "send application/fhir+json")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise FhirError(413, "too-costly", "the resource is too large")
    try:
        resource = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FhirError(400, "structure", f"the body is not valid JSON: {exc}") from exc
    return typed(resource, resource_type, "the body")


def typed(resource: Any, resource_type: str, what: str) -> dict[str, Any]:
    """``resource`` when it is a ``resource_type`` resource, else 400."""
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        raise FhirError(400, "invalid", f"{what} must be a {resource_type} resource")
    return resource


def _may_write(view: PolicyView, resource: dict[str, Any], scopes: list[Scope]) -> None:
    """Who may write what (ARCHITECTURE.md "Policy"; issue 4 items 4 and 6).

    A backend client registered for a Group writes, like it reads, only within that Group.
    A backend client registered without a Group (the imaging system publishing studies of any
    patient) writes within its scope's query. Patient- and user-level writers write only where the
    policy lets them see the result.
    """
    if view.principal.group_ref is not None and resource["resourceType"] == "Group":
        raise FhirError(
            403, "forbidden", "a backend client may not change Groups (its cohort is administered)"
        )
    if view.principal.group_ref is None:
        for scope in (s for s in scopes if s.level == "system"):
            try:
                if constraints.matches(resource, constraints.criteria(scope, resource["resourceType"])):
                    return
            except constraints.UnusableConstraint:
                continue
        scopes = [s for s in scopes if s.level != "system"]
    if not scopes or not view.decide(resource, scopes).allowed:
        raise FhirError(403, "forbidden", "this authorization may not write that resource")


async def create(request: Request) -> Response:
    """``POST [type]`` (FHIR R4 §3.1.0.8); with ``If-None-Exist: [search]`` a conditional create:
    a match is returned unchanged (200), more than one is 412, none creates (201), atomically."""
    ctx, auth, note = await audited_caller(request, audit.CREATE)
    resource_type = _resource_type(request)
    written = await create_resource(
        ctx,
        auth,
        note,
        resource_type,
        lambda t: read_body(request, t),
        request.headers.get("if-none-exist"),
        fresh_view(ctx, auth),
    )
    return _written_response(written)


async def create_resource(
    ctx: EhrContext,
    auth: Authenticated,
    note: Note,
    resource_type: str,
    body: Body,
    condition: str | None,
    views: Views,
) -> Written:
    """A create, conditional with ``condition`` (an ``If-None-Exist`` search), for ``POST [type]``
    and a batch's POST entries: scopes, then the policy, then the atomic write."""
    scopes = _require_scope(auth, resource_type, "c")
    if resource_type == "AuditEvent":
        scopes = _audit_writer(scopes)
        note.audited = False  # an added record is its own audit (a refusal is audited below)
    resource = await resolve_subject(ctx, await body(resource_type))
    resource.pop("id", None)
    view = await views()
    try:
        _may_write(view, resource, scopes)
    except FhirError:
        note.audited = True
        note.disclosures = [audit.Disclosure(subject_patient(resource), [resource_type])]
        raise
    if condition is None:
        return await _stored(ctx, note, ctx.store.put({**resource, "id": uuid.uuid4().hex}))
    parsed = parse_search(resource_type, parse_qsl(condition, keep_blank_values=True), strict=True)
    if not parsed.query.criteria:
        raise FhirError(400, "invalid", "If-None-Exist needs search criteria")

    def build(existing: dict[str, Any] | None) -> dict[str, Any]:
        if existing is None:
            return {**resource, "id": uuid.uuid4().hex}
        _may_write(view, existing, scopes)  # a match is returned: never one out of reach (403)
        return existing

    return await _stored(ctx, note, ctx.store.conditional_put(parsed.query, build))


def _keep_ehr_facts(existing: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """What a conditional update may not take away: the EHR's security labels (the publisher never
    sets them, so labels are only ever added here) and a subject an administrator reconciled."""
    merged = dict(incoming)
    labels = [*((existing.get("meta") or {}).get("security") or [])]
    labels += [c for c in (incoming.get("meta") or {}).get("security") or [] if c not in labels]
    if labels:
        merged["meta"] = {**(incoming.get("meta") or {}), "security": labels}
    old_subject = existing.get("subject") or {}
    new_subject = incoming.get("subject") or {}
    if old_subject.get("reference") and not new_subject.get("reference"):
        merged["subject"] = {**new_subject, "reference": old_subject["reference"]}
    return merged


def _checked(
    view: PolicyView, auth: Authenticated, resource: dict[str, Any], existing: dict[str, Any] | None
) -> dict[str, Any]:
    """What may be written in place of ``existing`` (None: a create), or 403."""
    scopes = _require_scope(auth, resource["resourceType"], "u" if existing else "c")
    if existing is not None:
        resource = _keep_ehr_facts(existing, resource)
        _may_write(view, existing, scopes)
    _may_write(view, resource, scopes)
    return resource


async def _stored(ctx: EhrContext, note: Note, write: Awaitable[tuple[dict[str, Any], bool]]) -> Written:
    try:
        stored, created = await write
    except ResourceConflict as exc:
        raise FhirError(409, "conflict", str(exc)) from exc
    except MultipleMatches as exc:
        raise FhirError(412, "multiple-matches", str(exc)) from exc
    ref = f"{stored['resourceType']}/{stored['id']}"
    if created:
        note.kind = audit.CREATE
    note.disclosures = [audit.Disclosure(subject_patient(stored), [ref])]
    location = (
        f"{ctx.settings.fhir_base}/{stored['resourceType']}/{stored['id']}"
        f"/_history/{stored['meta']['versionId']}"
    )
    return Written(stored, created, location)


def _written_response(written: Written) -> Response:
    return fhir_response(written.resource, 201 if written.created else 200, {"Location": written.location})


async def conditional_update(request: Request) -> Response:
    """``PUT [type]?[search]`` (FHIR R4 §3.1.0.4.3): no match creates, one match updates, more is 412.

    The match and the write are one atomic step (:meth:`Store.conditional_put`): publishers that
    retry or run in parallel never create the same study twice.
    """
    ctx, auth, note = await audited_caller(request, audit.UPDATE)
    written = await conditional_update_resource(
        ctx,
        auth,
        note,
        _resource_type(request),
        lambda t: read_body(request, t),
        request.query_params.multi_items(),
        fresh_view(ctx, auth),
    )
    return _written_response(written)


async def conditional_update_resource(
    ctx: EhrContext,
    auth: Authenticated,
    note: Note,
    resource_type: str,
    body: Body,
    criteria: Sequence[tuple[str, str]],
    views: Views,
) -> Written:
    """``PUT [type]?[criteria]`` for the interaction and a batch's entries."""
    _not_audit(resource_type)
    _require_scope(auth, resource_type, "u")
    resource = await resolve_subject(ctx, await body(resource_type))
    note.disclosures = [audit.Disclosure(subject_patient(resource), [resource_type])]
    parsed = parse_search(resource_type, criteria, strict=True)
    if not parsed.query.criteria:
        raise FhirError(400, "invalid", "a conditional update needs search criteria")
    view = await views()

    def build(existing: dict[str, Any] | None) -> dict[str, Any]:
        if existing is not None and resource.get("id") not in (None, existing["id"]):
            raise FhirError(400, "invalid", "the body's id differs from the matched resource")
        resource_id = existing["id"] if existing is not None else uuid.uuid4().hex
        return _checked(view, auth, {**resource, "id": resource_id}, existing)

    return await _stored(ctx, note, ctx.store.conditional_put(parsed.query, build))


async def update(request: Request) -> Response:
    """``PUT [type]/[id]`` (FHIR R4 §3.1.0.4): update, or create with the client's id."""
    ctx, auth, note = await audited_caller(request, audit.UPDATE)
    written = await update_resource(
        ctx,
        auth,
        note,
        _resource_type(request),
        str(request.path_params["id"]),
        lambda t: read_body(request, t),
        fresh_view(ctx, auth),
    )
    return _written_response(written)


async def update_resource(
    ctx: EhrContext,
    auth: Authenticated,
    note: Note,
    resource_type: str,
    resource_id: str,
    body: Body,
    views: Views,
) -> Written:
    """``PUT [type]/[id]`` for the interaction and a batch's entries."""
    _not_audit(resource_type)
    if not _ID.fullmatch(resource_id):
        raise FhirError(400, "invalid", "not a FHIR id ([A-Za-z0-9.-]{1,64})")
    note.disclosures = [audit.Disclosure(None, [f"{resource_type}/{resource_id}"])]
    resource = await resolve_subject(ctx, await body(resource_type))
    if resource.get("id") != resource_id:
        raise FhirError(400, "invalid", "the body's id must equal the id in the URL")
    existing = await ctx.store.read(resource_type, resource_id)
    view = await views()
    if existing is not None:
        note.disclosures = [audit.Disclosure(subject_patient(existing), [f"{resource_type}/{resource_id}"])]
        if not view.decide(existing, view.scopes_for(resource_type, ("r", "s"))).allowed:
            raise _not_found(resource_type, resource_id)
    return await _stored(ctx, note, ctx.store.put(_checked(view, auth, resource, existing)))


def _not_audit(resource_type: str) -> None:
    """AuditEvents are never changed through the API (security.md AU-05): 405."""
    if resource_type == "AuditEvent":
        raise FhirError(405, "not-supported", "AuditEvents cannot be changed", {"Allow": "GET, POST"})


def _audit_writer(scopes: list[Scope]) -> list[Scope]:
    """Only a system-level scope naming AuditEvent itself (``system/AuditEvent.c``, the imaging
    system's registration) may add audit records; a wildcard or a patient/user scope may not."""
    writers = [s for s in scopes if s.level == "system" and s.resource_type == "AuditEvent"]
    if not writers:
        raise FhirError(
            403,
            "forbidden",
            "only a client registered with system/AuditEvent.c may add AuditEvents",
            {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        )
    return writers


async def delete(request: Request) -> Response:
    """``DELETE`` is not supported for any resource (FHIR R4 §3.1.0.7: 405), AuditEvent included."""
    raise FhirError(
        405, "not-supported", "this server does not delete resources", {"Allow": "GET, POST, PUT"}
    )


def journal(ctx: EhrContext, note: Note, status: int) -> None:
    """Queue the AuditEvents of an answered interaction (or batch entry) for writing."""
    if note.actor is not None and note.audited:
        audit.trail(ctx).record(note.kind, note.actor, status, note.disclosures, note.query)


def handle_errors(endpoint: Any) -> Any:
    """Errors become OperationOutcomes; then the request's AuditEvents are queued for writing."""

    async def wrapped(request: Request) -> Response:
        try:
            response: Response = await endpoint(request)
        except Unauthenticated as exc:
            return bearer_challenge(exc.error, exc.description)
        except FhirError as exc:
            response = exc.response()
        except JournalUnavailable:
            raise  # the app's handler answers 503: nothing is disclosed without its AuditEvent
        except Exception:  # an error of ours: still an OperationOutcome, never a stack trace
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            response = FhirError(500, "exception", "internal error").response()
        note: Note | None = getattr(request.state, "audit", None)
        if note is not None:
            journal(request.app.state.ctx, note, response.status_code)
        return response

    return wrapped


routes = [
    Route("/fhir/metadata", metadata, methods=["GET"]),
    Route("/fhir/{type}", handle_errors(search), methods=["GET"]),
    Route("/fhir/{type}", handle_errors(create), methods=["POST"]),
    Route("/fhir/{type}", handle_errors(conditional_update), methods=["PUT"]),
    Route("/fhir/{type}/{id}", handle_errors(read), methods=["GET"]),
    Route("/fhir/{type}/{id}", handle_errors(update), methods=["PUT"]),
    Route("/fhir/{type}", handle_errors(delete), methods=["DELETE"]),
    Route("/fhir/{type}/{id}", handle_errors(delete), methods=["DELETE"]),
]
