"""The client registry: every app, backend service and resource server registers here, once.

Client kinds (SMART App Launch 2.2 "Client Authentication"): ``public`` apps, ``confidential``
apps using asymmetric keys, and ``backend`` services (client_credentials, RFC 7523 assertions).
Only a Backend Services client may be an imaging source: the registry refuses to store any other
with the mark (:class:`NotAnImagingSource`), whoever asks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from sqlalchemy import Select, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.cors import origin_of
from imagebridge.ehr.tables import clients

ClientKind = Literal["backend", "public", "confidential"]


@dataclass(frozen=True)
class Client:
    client_id: str
    kind: ClientKind
    name: str
    scope: str
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    redirect_uris: tuple[str, ...] = ()
    launch_url: str | None = None
    group_ref: str | None = None
    zero_click: bool = False
    enabled: bool = True
    #: SHA-256 of the RFC 7592 registration access token; None for clients an administrator added.
    registration_token: str | None = None
    #: A backend client registered as an imaging source (a modality or an archive feed): it may
    #: store imaging for any DICOM PatientID (docs/policy.md "Writing imaging").
    imaging_source: bool = False


class NotAnImagingSource(ValueError):
    """An imaging source asked for a client that is not a Backend Services client."""

    def __init__(self, client_id: str) -> None:
        super().__init__(
            f"only a backend client can be an imaging source ({client_id!r} is not one: SMART Backend"
            " Services, authenticating with private_key_jwt keys, without redirect URIs)"
        )


def backend_service(client: Client) -> bool:
    """A SMART Backend Services client: ``client_credentials`` authenticated by ``private_key_jwt``
    (registered keys), never sent through a browser (no redirect URIs)."""
    return client.kind == "backend" and bool(client.jwks or client.jwks_uri) and not client.redirect_uris


def _checked(client: Client) -> Client:
    """``client``, if it may be stored as it is (docs/policy.md "Writing imaging")."""
    if client.imaging_source and not backend_service(client):
        raise NotAnImagingSource(client.client_id)
    return client


class ClientRegistry:
    """Read and write client registrations; an imaging source is always a backend service."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def get(self, client_id: str) -> Client | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_by_id(client_id))).mappings().first()
        return None if row is None else client_from_row(dict(row))

    async def all(self) -> list[Client]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(clients).order_by(clients.c.client_id))).mappings().all()
        return [client_from_row(dict(r)) for r in rows]

    async def origins(self) -> frozenset[str]:
        """The origins of the enabled clients' http(s) redirect URIs: the pages a browser app runs
        in, which the EHR's CORS grants (ehr/cors.py; SMART App Launch 2.2 "registered origin")."""
        query = select(clients.c.redirect_uris).where(clients.c.enabled.is_(True))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).scalars().all()
        found = (origin_of(uri) for row in rows for uri in orjson.loads(row or "[]"))
        return frozenset(origin for origin in found if origin is not None)

    async def add(self, client: Client) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(insert(clients).values(**_row(_checked(client)), created_at=time.time()))

    async def replace_registered(self, client: Client, token_digest: str) -> bool:
        """Store ``client`` if its registration access token is still ``token_digest`` (RFC 7592).

        Compare-and-swap, so two requests with the same token cannot both succeed.
        """
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(clients)
                .where(clients.c.client_id == client.client_id, clients.c.registration_token == token_digest)
                .values(**_row(_checked(client)))
            )
        return done.rowcount == 1

    async def set_enabled(self, client_id: str, enabled: bool) -> bool:
        return await self._set(client_id, enabled=enabled)

    async def set_imaging_source(self, client_id: str, imaging_source: bool) -> bool:
        """Mark a registered client as an imaging source or not (docs/policy.md "Writing imaging");
        False for an unknown client, :class:`NotAnImagingSource` for one that may not be a source.
        The row stays locked from the check to the write."""
        async with self.engine.begin() as conn:
            row = (await conn.execute(_by_id(client_id).with_for_update())).mappings().first()
            if row is None:
                return False
            _checked(replace(client_from_row(dict(row)), imaging_source=imaging_source))
            await conn.execute(
                update(clients).where(clients.c.client_id == client_id).values(imaging_source=imaging_source)
            )
        return True

    async def _set(self, client_id: str, **values: bool) -> bool:
        """Update ``values`` of the client's row; False for an unknown client."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(clients).where(clients.c.client_id == client_id).values(**values)
            )
        return bool(result.rowcount)


def _by_id(client_id: str) -> Select[Any]:
    return select(clients).where(clients.c.client_id == client_id)


def _row(client: Client) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "kind": client.kind,
        "name": client.name,
        "scope": client.scope,
        "jwks": orjson.dumps(client.jwks).decode() if client.jwks is not None else None,
        "jwks_uri": client.jwks_uri,
        "redirect_uris": orjson.dumps(list(client.redirect_uris)).decode(),
        "launch_url": client.launch_url,
        "group_ref": client.group_ref,
        "zero_click": client.zero_click,
        "enabled": client.enabled,
        "registration_token": client.registration_token,
        "imaging_source": client.imaging_source,
    }


def client_from_row(row: Mapping[str, Any]) -> Client:
    """A registration as stored in the ``clients`` table."""
    return Client(
        client_id=row["client_id"],
        kind=row["kind"],
        name=row["name"],
        scope=row["scope"],
        jwks=orjson.loads(row["jwks"]) if row["jwks"] else None,
        jwks_uri=row["jwks_uri"],
        redirect_uris=tuple(orjson.loads(row["redirect_uris"] or "[]")),
        launch_url=row["launch_url"],
        group_ref=row["group_ref"],
        zero_click=bool(row["zero_click"]),
        enabled=bool(row["enabled"]),
        registration_token=row["registration_token"],
        imaging_source=bool(row["imaging_source"]),
    )
