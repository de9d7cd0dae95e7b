"""The EHR application factory: SMART authorization server + FHIR R4 API in one ASGI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from imagebridge.common import db, http
from imagebridge.common import settings as settings_mod
from imagebridge.common.audit_journal import DurableResponses, JournalUnavailable
from imagebridge.common.settings import EhrSettings
from imagebridge.common.sliding_window import Limiter
from imagebridge.ehr import audit
from imagebridge.ehr.bulk import routes as bulk_routes
from imagebridge.ehr.bulk.jobs import BulkExports
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.cors import EhrCors
from imagebridge.ehr.fhir import batch, rest
from imagebridge.ehr.fhir.outcome import FhirError
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.policy.engine import PolicyEngine
from imagebridge.ehr.smart import discovery
from imagebridge.ehr.smart.authorize import authorize_endpoint
from imagebridge.ehr.smart.clients import ClientRegistry
from imagebridge.ehr.smart.grants import GrantStore
from imagebridge.ehr.smart.introspection import introspection_endpoint
from imagebridge.ehr.smart.jwks_fetch import JwksFetcher
from imagebridge.ehr.smart.keys import SigningKeys
from imagebridge.ehr.smart.registration import client_configuration_endpoint, registration_endpoint
from imagebridge.ehr.smart.replay import DatabaseReplayStore
from imagebridge.ehr.smart.revocation import revocation_endpoint
from imagebridge.ehr.smart.token import token_endpoint
from imagebridge.ehr.ui import pages

MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(settings: EhrSettings) -> None:
    """Bring the EHR database to the current schema."""
    db.upgrade(MIGRATIONS, settings.resolved_database_url)


def build_context(settings: EhrSettings) -> EhrContext:
    engine = db.create_engine(settings.resolved_database_url)
    store = Store(engine)
    replay = DatabaseReplayStore(engine)
    return EhrContext(
        settings=settings,
        engine=engine,
        store=store,
        clients=ClientRegistry(engine),
        grants=GrantStore(engine, replay),
        keys=SigningKeys(engine),
        replay=replay,
        jwks=JwksFetcher(allow_loopback_http=settings.origin.startswith("http://127.0.0.1")),
        policy=PolicyEngine(store),
        http=http.client(5.0),
        registrations=Limiter(settings.registration_rate_limit, settings.registration_rate_window),
    )


async def health(_: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(settings: EhrSettings) -> Starlette:
    """The EHR as an ASGI application (the database must already be migrated)."""
    ctx = build_context(settings)
    bulk = BulkExports(ctx.engine, ctx.store, ctx.policy)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await ctx.keys.active()
        await audit.trail(ctx).start()  # commits what an ended process journaled
        await bulk.resume()
        yield
        await bulk.stop()
        await audit.trail(ctx).aclose()
        await ctx.http.aclose()
        await ctx.engine.dispose()

    routes = [
        Route("/healthz", health),
        Route("/fhir/.well-known/smart-configuration", discovery.smart_configuration),
        Route("/fhir/.well-known/openid-configuration", discovery.openid_configuration),
        Route("/.well-known/jwks.json", discovery.jwks),
        Route("/auth/token", token_endpoint, methods=["POST"]),
        Route("/auth/introspect", introspection_endpoint, methods=["POST"]),
        Route("/auth/authorize", authorize_endpoint, methods=["GET", "POST"]),
        Route("/auth/revoke", revocation_endpoint, methods=["POST"]),
        Route("/auth/register", registration_endpoint, methods=["POST"]),
        Route("/auth/register/{client_id}", client_configuration_endpoint, methods=["GET", "PUT", "DELETE"]),
        *pages.routes,
        *bulk_routes.routes,  # before rest.routes: "/fhir/$export" would match "/fhir/{type}"
        *batch.routes,
        *rest.routes,
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={JournalUnavailable: lambda request, exc: _audit_unavailable()},
        lifespan=lifespan,
    )
    if settings.audit_fsync:
        app.add_middleware(
            DurableResponses, journal=lambda: audit.trail(ctx).journal, refuse=_audit_unavailable
        )
    app.add_middleware(EhrCors, ctx=ctx)  # outermost: a refusal of DurableResponses is readable too
    app.state.ctx = ctx
    app.state.bulk = bulk
    return app


def _audit_unavailable() -> Response:
    """No AuditEvent could be journaled, so nothing is disclosed (ARCHITECTURE.md invariants)."""
    refusal = FhirError(503, "transient", "the audit record could not be stored", {"Retry-After": "5"})
    return refusal.response()


def app_from_env() -> Starlette:
    """Factory for multi-worker serving: settings from the environment and $IMAGEBRIDGE_CONFIG."""
    return create_app(settings_mod.load(EhrSettings, "ehr"))
