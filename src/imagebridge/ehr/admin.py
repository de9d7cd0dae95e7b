"""Administration of the EHR's registry, for the ``imagebridge ehr`` command and the demo.

Registration happens once, here at the EHR: backend services and confidential apps are added
by an administrator; the imaging system is registered the same way (ARCHITECTURE.md
"Registration"). People who sign in (patients, proxies, clinicians) are added here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagebridge.common import db
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.smart.clients import Client, ClientKind, ClientRegistry
from imagebridge.ehr.smart.grants import GrantStore
from imagebridge.ehr.smart.users import InvalidUser, User, UserStore, checked_roles
from imagebridge.ehr.ui.sessions import SessionStore

#: The shortest password an administrator may set (NIST SP 800-63B §5.1.1.2 asks for at least 8).
MIN_PASSWORD = 12


class Admin:
    """Direct, offline access to an EHR database."""

    def __init__(self, settings: EhrSettings) -> None:
        self.settings = settings
        self.engine = db.create_engine(settings.resolved_database_url, pool_size=2)
        self.clients = ClientRegistry(self.engine)
        self.store = Store(self.engine)
        self.users = UserStore(self.engine)

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
        imaging_source: bool = False,
    ) -> Client:
        """Register a client; ``imaging_source`` marks a backend client that stores imaging for
        any PatientID (a modality or an archive feed; docs/policy.md "Writing imaging"). A bad
        registration is a ``ValueError`` (the registry's :class:`NotAnImagingSource` among them)."""
        if kind in ("backend", "confidential") and not (jwks or jwks_uri):
            raise ValueError(f"a {kind} client needs a JWKS (inline or by URL)")
        if await self.clients.get(client_id) is not None:
            raise ValueError(f"a client {client_id!r} is registered already")
        client = replace(
            Client(client_id, kind, name or client_id, scope, jwks, jwks_uri, tuple(redirect_uris)),
            launch_url=launch_url,
            group_ref=group,
            zero_click=zero_click,
            imaging_source=imaging_source,
        )
        await self.clients.add(client)
        return client

    async def add_user(
        self,
        username: str,
        password: str,
        fhir_user: str,
        *,
        display_name: str = "",
        roles: Sequence[str] = (),
    ) -> User:
        """A new person who signs in; their ``fhirUser`` must exist in this EHR."""
        if not username or len(username) > 100 or any(c.isspace() or c == "/" for c in username):
            raise InvalidUser("a username is 1-100 characters without spaces or slashes")
        _check_password(password)
        checked_roles(fhir_user, roles)
        kind, _, ident = fhir_user.partition("/")
        if await self.store.read(kind, ident) is None:
            raise InvalidUser(f"there is no {fhir_user} in this EHR")
        return await self.users.add(username, password, fhir_user, display_name, roles)

    async def disable_user(self, username: str) -> tuple[int, int] | None:
        """Stop ``username`` signing in, end their EHR sessions and revoke every token they granted.

        (sessions ended, tokens revoked), or None for an unknown user.
        """
        if not await self.users.set_enabled(username, False):
            return None
        return await SessionStore(self.engine).end_all(username), await GrantStore(self.engine).revoke_sub(
            username
        )

    async def set_password(self, username: str, password: str) -> int | None:
        """Give ``username`` a new password and end their EHR sessions (so online_access refresh
        tokens end with them); how many sessions ended, or None for an unknown user. Apps the user
        authorized with offline_access keep their grants (the user revokes those as connected apps).
        """
        _check_password(password)
        if not await self.users.set_password(username, password):
            return None
        return await SessionStore(self.engine).end_all(username)

    async def put_resource(self, resource: dict[str, Any]) -> dict[str, Any]:
        stored, _ = await self.store.put(resource)
        return stored


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidUser(f"the password must have at least {MIN_PASSWORD} characters")


def read_jwks(path: Path) -> dict[str, Any]:
    """A JWK Set from a file holding a JWKS or a single (public) JWK."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data if "keys" in data else {"keys": [data]}
