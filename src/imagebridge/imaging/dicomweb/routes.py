"""The DICOMweb URL space of the imaging system (PS3.18 §10: Studies Service).

Every route runs behind the gate: there is no second way in (ARCHITECTURE.md invariant 2).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from imagebridge.common.responses import JSONResponse
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import bulkdata, frames, metadata, qido, rendered, stow, wado
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.ehr_client import EhrUnavailable, request_budget
from imagebridge.imaging.gate.gate import Access, GateRefusal, unavailable

BASE = "/dicom-web"
#: A capability URL is a credential: no cache may keep it.
NO_STORE = {"Cache-Control": "no-store"}
Handler = Callable[[ImagingContext, Access, Request], Awaitable[Response]]


def gated(handler: Handler, operation: str = "read") -> Callable[[Request], Awaitable[Response]]:
    """Admit the request at the gate, run ``handler``, and audit the decision before any byte goes.

    Refusals answer as the gate says (401/403/503); an EHR or cache fault anywhere in the
    handler's decisions is 503, never data (ARCHITECTURE.md invariant 4).
    """

    async def endpoint(request: Request) -> Response:
        started = time.monotonic()
        ctx: ImagingContext = request.app.state.ctx
        request_budget(ctx.settings.ehr_timeout)  # every EHR question of this request shares it
        access: Access | None = None
        detail: str | None = None
        try:
            access = (
                await ctx.gate.admit_capability(request)
                if "capability" in request.path_params
                else await ctx.gate.admit(request, "write" if operation == "write" else "read")
            )
            response = keep_private(await handler(ctx, access, request))
        except GateRefusal as refusal:
            response, detail = refusal.response, refusal.reason
        except EhrUnavailable as exc:
            response, detail = unavailable(str(exc)).response, str(exc)
        except DicomwebError as exc:
            response, detail = exc.response(), exc.message
        return await ctx.audit.record(request, access, response, detail, started=started)

    return endpoint


def keep_private(response: Response) -> Response:
    """A gated answer that carries or revalidates data (below 400) stays out of shared caches
    (security.md ISO-11; RFC 9111 §5.2.2.7): ``Cache-Control: private, no-store`` unless the
    handler chose its own private policy (metadata: ``private, no-cache`` for ETag revalidation;
    any other policy, e.g. a PACS's in proxy mode, is replaced), and ``Vary: Authorization``, as
    the body depends on the caller."""
    if response.status_code < 400:
        policy = response.headers.get("cache-control", "")
        if "private" not in policy and "no-store" not in policy:
            response.headers["Cache-Control"] = "private, no-store"
        response.headers.add_vary_header("Authorization")
    return response


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    values = (params["study"], params.get("series"), params.get("instance"))
    if not all(v is None or is_valid_uid(v) for v in values):
        raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    return values[0], values[1], values[2]


async def retrieve(ctx: ImagingContext, access: Access, request: Request) -> Response:
    study, series, instance = _uids(request)
    rows = await ctx.index.instances_of(study, series, instance)
    if not rows or not await ctx.gate.may_see_study(access, study):
        return not_found()
    return await wado.retrieve(ctx.blobs, rows, request.headers.get("accept"))


async def store(ctx: ImagingContext, access: Access, request: Request) -> Response:
    study = request.path_params.get("study")
    return await stow.store_instances(ctx, request, study, ctx.gate.write_check(access))


_STUDY = f"{BASE}/studies/{{study}}"
_SERIES = f"{_STUDY}/series/{{series}}"
_INSTANCE = f"{_SERIES}/instances/{{instance}}"

routes: list[BaseRoute] = [
    # QIDO-RS (PS3.18 §10.6)
    Route(f"{BASE}/studies", gated(qido.handler("study")), methods=["GET"]),
    Route(f"{_STUDY}/series", gated(qido.handler("series")), methods=["GET"]),
    Route(f"{BASE}/series", gated(qido.handler("series")), methods=["GET"]),
    Route(f"{_SERIES}/instances", gated(qido.handler("instance")), methods=["GET"]),
    Route(f"{_STUDY}/instances", gated(qido.handler("instance")), methods=["GET"]),
    Route(f"{BASE}/instances", gated(qido.handler("instance")), methods=["GET"]),
    # WADO-RS metadata and bulk data (PS3.18 §10.4)
    Route(f"{_STUDY}/metadata", gated(metadata.retrieve_metadata), methods=["GET"]),
    Route(f"{_SERIES}/metadata", gated(metadata.retrieve_metadata), methods=["GET"]),
    Route(f"{_INSTANCE}/metadata", gated(metadata.retrieve_metadata), methods=["GET"]),
    Route(f"{_INSTANCE}/bulkdata/{{tagpath:path}}", gated(bulkdata.retrieve_bulkdata), methods=["GET"]),
    Route(f"{BASE}/studies", gated(store, "write"), methods=["POST"]),
    Route(f"{BASE}/studies/{{study}}", gated(store, "write"), methods=["POST"]),
    Route(f"{BASE}/studies/{{study}}", gated(retrieve), methods=["GET"]),
    Route(f"{BASE}/studies/{{study}}/series/{{series}}", gated(retrieve), methods=["GET"]),
    Route(
        f"{BASE}/studies/{{study}}/series/{{series}}/instances/{{instance}}", gated(retrieve), methods=["GET"]
    ),
]

# WADO-RS frames, rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §10.4.1.1.4, §10.4.1.1.6)
_FRAMES = f"{_INSTANCE}/frames/{{frames}}"
routes += [
    Route(_FRAMES, gated(frames.frames_endpoint), methods=["GET"]),
    *(
        Route(f"{resource}/rendered", gated(rendered.rendered_endpoint), methods=["GET"])
        for resource in (_STUDY, _SERIES, _INSTANCE, _FRAMES)
    ),
    *(
        Route(f"{resource}/thumbnail", gated(rendered.thumbnail_endpoint), methods=["GET"])
        for resource in (_STUDY, _SERIES, _INSTANCE, _FRAMES)
    ),
]


async def issue_capability(ctx: ImagingContext, access: Access, request: Request) -> Response:
    """``POST {base}/studies/{study}/capability``: a capability URL for a study this token may see.

    In proxy mode the PACS holds the study: the EHR's decision (which names only published
    studies) is the whole check; the archive also requires the study in its index.
    """
    study, _, _ = _uids(request)
    held = ctx.upstream is not None or bool(await ctx.index.instances_of(study, None, None))
    if not held or not await ctx.gate.may_see_study(access, study):
        return not_found()
    sealed, expires_at = ctx.gate.issue_capability(access, study)
    url = f"{ctx.settings.dicomweb_base}/cap/{sealed}/studies/{study}"
    return JSONResponse({"url": url, "study": study, "expires_at": int(expires_at)}, headers=NO_STORE)


def capability_routes(study_routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """Issuing capability URLs, and every GET route of ``study_routes`` under one study again under
    ``{base}/cap/{capability}`` (spec.md §1.7); the archive and proxy mode share them."""
    return [
        Route(f"{_STUDY}/capability", gated(issue_capability), methods=["POST"]),
        Mount(
            f"{BASE}/cap/{{capability}}",
            routes=[
                Route(route.path.removeprefix(BASE), route.endpoint, methods=["GET"])
                for route in study_routes
                if isinstance(route, Route)
                and route.path.startswith(_STUDY)
                and "GET" in (route.methods or ())
            ],
        ),
    ]


# Capability URLs (keep these last: the mount repeats the study routes defined above).
routes += capability_routes(routes)
