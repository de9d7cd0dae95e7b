"""The client registry keeps the imaging-source mark on Backend Services clients only (docs/policy.md
"Writing imaging"), whichever way it is asked (registry, Admin; the CLI in test_clients_cli.py),
on SQLite and PostgreSQL; a mark put on another client around the registry grants nothing."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from sqlalchemy import update

from imagebridge.common import jose
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.bearer import principal_for
from imagebridge.ehr.smart.clients import Client, ClientRegistry, NotAnImagingSource
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.tables import clients

REFUSAL = "only a backend client can be an imaging source"
JWKS = jose.public_jwks(jose.generate_private_jwk("ES384"))
BACKEND = Client("modality", "backend", "Modality", "system/ImagingStudy.c", JWKS)
#: Clients that are not SMART Backend Services: apps, and a "backend" without keys or with a redirect.
NOT_BACKEND = (
    Client("viewer", "public", "Viewer", "patient/*.cruds", redirect_uris=("https://viewer.example/cb",)),
    Client(
        "portal", "confidential", "Portal", "patient/*.cruds", JWKS, redirect_uris=("https://p.example/cb",)
    ),
    Client("keyless", "backend", "Keyless", "system/ImagingStudy.c"),
    Client(
        "browser",
        "backend",
        "Browser",
        "system/ImagingStudy.c",
        JWKS,
        redirect_uris=("https://b.example/cb",),
    ),
)


async def _marked(registry: ClientRegistry, client_id: str) -> bool:
    """Whether the registered ``client_id`` is stored as an imaging source."""
    stored = await registry.get(client_id)
    assert stored is not None
    return stored.imaging_source


def test_the_registry_stores_no_other_imaging_source(ehr_settings: EhrSettings) -> None:
    async def run() -> None:
        admin = Admin(ehr_settings)
        registry = admin.clients
        try:
            for client in NOT_BACKEND:
                with pytest.raises(NotAnImagingSource, match=REFUSAL):
                    await registry.add(replace(client, imaging_source=True))
                assert await registry.get(client.client_id) is None
                await registry.add(client)
                with pytest.raises(NotAnImagingSource):
                    await registry.set_imaging_source(client.client_id, True)
                assert await registry.set_imaging_source(client.client_id, False)  # taking it away is fine
                assert not await _marked(registry, client.client_id)

            registered = replace(NOT_BACKEND[0], client_id="dynamic", registration_token="digest")
            await registry.add(registered)
            with pytest.raises(NotAnImagingSource):  # an RFC 7592 update cannot carry the mark either
                await registry.replace_registered(replace(registered, imaging_source=True), "digest")
            assert not await _marked(registry, "dynamic")

            await registry.add(BACKEND)
            assert await registry.set_imaging_source("modality", True)
            assert await _marked(registry, "modality")
            assert not await registry.set_imaging_source("no-such-client", True)
        finally:
            await admin.close()

    asyncio.run(run())


def test_admin_refuses_an_imaging_source_that_is_not_a_backend(ehr_settings: EhrSettings) -> None:
    async def run() -> None:
        admin = Admin(ehr_settings)
        try:
            for client in NOT_BACKEND[:2] + NOT_BACKEND[3:]:  # the keyless one "needs a JWKS" first
                with pytest.raises(ValueError, match=REFUSAL):
                    await admin.add_client(
                        client.client_id,
                        client.kind,
                        scope=client.scope,
                        jwks=client.jwks,
                        redirect_uris=client.redirect_uris,
                        imaging_source=True,
                    )
            assert [c.client_id for c in await admin.clients.all()] == []
            await admin.add_client("modality", "backend", scope=BACKEND.scope, jwks=JWKS, imaging_source=True)
            assert await _marked(admin.clients, "modality")
        finally:
            await admin.close()

    asyncio.run(run())


def test_a_mark_written_around_the_registry_grants_nothing(ehr_settings: EhrSettings) -> None:
    """The runtime check in bearer.principal_for: a row changed by hand (SQL) on an app."""

    async def run() -> tuple[bool, bool]:
        admin = Admin(ehr_settings)
        try:
            await admin.clients.add(NOT_BACKEND[0])
            await admin.clients.add(replace(BACKEND, imaging_source=True))
            async with admin.engine.begin() as conn:
                await conn.execute(
                    update(clients).where(clients.c.client_id == "viewer").values(imaging_source=True)
                )
            assert await _marked(admin.clients, "viewer")
            now = time.time()
            app = Grant("viewer", "patient/ImagingStudy.c", now + 60, now, patient="alice")
            source = Grant("modality", BACKEND.scope, now + 60, now)
            return (
                principal_for(app, await admin.clients.get("viewer")).imaging_source,
                principal_for(source, await admin.clients.get("modality")).imaging_source,
            )
        finally:
            await admin.close()

    assert asyncio.run(run()) == (False, True)
