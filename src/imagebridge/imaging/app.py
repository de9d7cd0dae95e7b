"""The imaging-system application factory: DICOMweb behind the delegated-authorization gate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from imagebridge.common import db, http, jose
from imagebridge.common import settings as settings_mod
from imagebridge.common.audit_journal import DurableResponses, JournalUnavailable
from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.archive.blobs import open_blob_store
from imagebridge.imaging.archive.index import Index
from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb import routes as dicomweb_routes
from imagebridge.imaging.dicomweb.cors import DicomwebCors
from imagebridge.imaging.gate import redis_cache
from imagebridge.imaging.gate.audit import JOURNAL_DIR, AuditLog
from imagebridge.imaging.gate.audit_publish import AuditPublisher
from imagebridge.imaging.gate.capability import Capabilities, load_or_create_key
from imagebridge.imaging.gate.ehr_client import EhrClient
from imagebridge.imaging.gate.gate import Gate, unavailable
from imagebridge.imaging.publish import Publisher
from imagebridge.imaging.upstream import proxy
from imagebridge.imaging.upstream.client import UpstreamClient
from imagebridge.imaging.upstream.sync import Scanner, UpstreamSummaries

MIGRATIONS = Path(__file__).parent / "migrations"
#: What this system asks the EHR for with its own registration: introspection, publishing and
#: its audit records (AuditEvent create).
OWN_SCOPE = "introspection system/ImagingStudy.cru system/Endpoint.cru system/AuditEvent.c"


def migrate(settings: ImagingSettings) -> None:
    db.upgrade(MIGRATIONS, settings.resolved_database_url)


def build_context(settings: ImagingSettings) -> ImagingContext:
    engine = db.create_engine(settings.resolved_database_url)
    client = http.client(settings.ehr_timeout, ca_file=settings.ehr_ca_file)
    ehr = EhrClient(
        client,
        settings.ehr_fhir_base,
        settings.client_id,
        jose.load_or_create_private_jwk(settings.private_key_file),
        OWN_SCOPE,
        introspection_endpoint=settings.introspection_endpoint,
        deadline=settings.ehr_timeout,
    )
    index = Index(engine)
    upstream = UpstreamClient(settings) if settings.upstream_url else None
    token_backend, study_backend = (
        redis_cache.gate_backends(settings.cache_url)[:2] if settings.cache_url else (None, None)
    )
    return ImagingContext(
        settings=settings,
        engine=engine,
        index=index,
        blobs=open_blob_store(settings),
        gate=Gate(
            ehr,
            settings.dicomweb_base,
            revocation_window=settings.revocation_window,
            negative_ttl=settings.negative_cache_ttl,
            token_backend=token_backend,
            study_backend=study_backend,
            capabilities=(
                Capabilities(load_or_create_key(settings.data_dir)) if settings.capability_urls else None
            ),
        ),
        publisher=Publisher(
            engine,
            UpstreamSummaries(upstream) if upstream else index,
            ehr,
            settings.dicomweb_base,
            settings.mrn_system,
        ),
        http=client,
        audit=AuditLog(
            engine, settings.mrn_system, settings.data_dir / JOURNAL_DIR, fsync=settings.audit_fsync
        ),
        upstream=upstream,
    )


def audit_publisher(ctx: ImagingContext) -> AuditPublisher:
    """The background publisher of the audit trail to the EHR (gate/audit_publish.py)."""
    return AuditPublisher(
        ctx.engine,
        ctx.publisher.ehr,
        source=ctx.settings.dicomweb_base,
        mrn_system=ctx.settings.mrn_system,
        written=ctx.audit.written,
    )


def scanner(ctx: ImagingContext) -> Scanner | None:
    """Proxy mode's scanner of the upstream for studies to publish (None for the archive)."""
    if ctx.upstream is None:
        return None
    return Scanner(ctx.upstream, ctx.engine, ctx.settings.data_dir / "upstream-sync.json")


async def health(_: Request) -> Response:
    return PlainTextResponse("ok")


def create_app(settings: ImagingSettings) -> Starlette:
    """The imaging system as an ASGI application (the database must already be migrated)."""
    ctx = build_context(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await ctx.audit.start()
        tasks = [asyncio.create_task(ctx.publisher.run()), asyncio.create_task(audit_publisher(ctx).run())]
        scan = scanner(ctx)
        if scan is not None:
            tasks.append(asyncio.create_task(scan.run(settings.upstream_sync_interval, ctx.publisher.wakeup)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if ctx.upstream is not None:
            await ctx.upstream.aclose()
        await ctx.http.aclose()
        await ctx.audit.aclose()
        await ctx.engine.dispose()

    app = Starlette(
        routes=[Route("/healthz", health), *(proxy.routes if ctx.upstream else dicomweb_routes.routes)],
        middleware=[
            Middleware(DicomwebCors, allowed_origins=settings.cors_allowed_origins),
            *(
                [Middleware(DurableResponses, journal=lambda: ctx.audit.journal, refuse=_audit_unavailable)]
                if settings.audit_fsync
                else []
            ),
        ],
        exception_handlers={JournalUnavailable: lambda request, exc: _audit_unavailable()},
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    return app


def _audit_unavailable() -> Response:
    """No audit record could be journaled, so nothing is served (ARCHITECTURE.md invariants)."""
    return unavailable("the audit record could not be stored").response


def app_from_env() -> Starlette:
    """Factory for multi-worker serving: settings from the environment and $IMAGEBRIDGE_CONFIG."""
    return create_app(settings_mod.load(ImagingSettings, "imaging"))
