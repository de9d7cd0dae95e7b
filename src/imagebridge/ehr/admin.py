"""Administration of the EHR's registry, for the ``imagebridge ehr`` command and the demo.

Registration happens once, here at the EHR: backend services and confidential apps are added
by an administrator; the imaging system is registered the same way (ARCHITECTURE.md
"Registration").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagebridge.common import db
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.smart.clients import Client, ClientKind, ClientRegistry


class Admin:
    """Direct, offline access to an EHR database."""

    def __init__(self, settings: EhrSettings) -> None:
        self.settings = settings
        self.engine = db.create_engine(settings.resolved_database_url, pool_size=2)
        self.clients = ClientRegistry(self.engine)
        self.store = Store(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def add_client(
        self,
        client_id: str,
        kind: ClientKind,
        *,
        scope: str,
        name: str = "",
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
        redirect_uris: Sequence[str] = (),
        launch_url: str | None = None,
        group: str | None = None,
        zero_click: bool = False,
    ) -> Client:
        if kind in ("backend", "confidential") and not (jwks or jwks_uri):
            raise ValueError(f"a {kind} client needs a JWKS (inline or by URL)")
        client = Client(
            client_id=client_id,
            kind=kind,
            name=name or client_id,
            scope=scope,
            jwks=jwks,
            jwks_uri=jwks_uri,
            redirect_uris=tuple(redirect_uris),
            launch_url=launch_url,
            group_ref=group,
            zero_click=zero_click,
            enabled=True,
        )
        await self.clients.add(client)
        return client

    async def put_resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        stored, _ = await self.store.put(resource)
        return stored


def read_jwks(path: Path) -> dict[str, Any]:
    """A JWK Set from a file holding a JWKS or a single (public) JWK."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data if "keys" in data else {"keys": [data]}
