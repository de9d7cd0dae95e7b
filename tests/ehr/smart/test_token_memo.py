"""The running EHR's token endpoint verifies Backend Services assertions against the registration
its worker remembers (ehr/smart/memo.py), and never against a stale one: each test first gets a
token (the registration is remembered), then changes the registration the way another worker or
the admin CLI would (a connection of its own), and asks again at once. A rotated key, a narrowed
scope, a disabled client: each counts at the very next request; a replayed ``jti`` stays refused."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import update
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import ehr_cli

from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.tables import clients

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "system/ImagingStudy.rs system/Patient.rs"


def _change(ehr: RunningStack, client_id: str, **values: Any) -> None:
    """UPDATE the client's row through a connection of the test's own."""

    async def run() -> None:
        admin = Admin(ehr.stack.ehr_settings)
        try:
            async with admin.engine.begin() as conn:
                await conn.execute(update(clients).where(clients.c.client_id == client_id).values(**values))
        finally:
            await admin.close()

    asyncio.run(run())


@pytest.fixture
def backend(ehr: RunningStack) -> tuple[str, dict[str, Any]]:
    """A new backend client (inline JWKS, ES384 key) and its private key."""
    client_id, key = f"memo-backend-{secrets.token_hex(4)}", jose.generate_private_jwk("ES384")

    async def add() -> None:
        admin = Admin(ehr.stack.ehr_settings)
        try:
            await admin.add_client(client_id, "backend", scope=SCOPE, jwks=jose.public_jwks(key))
        finally:
            await admin.close()

    asyncio.run(add())
    return client_id, key


def assertion(origin: str, client_id: str, key: dict[str, Any]) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{origin}/auth/token",
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    return jose.sign(claims, key)


def token(origin: str, signed: str, scope: str = SCOPE) -> httpx.Response:
    return httpx.post(
        f"{origin}/auth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": signed,
        },
    )


def granted(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return set(response.json()["scope"].split())


def refused(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


def test_a_key_rotated_in_the_registration_counts_at_once(
    ehr: RunningStack, origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, old = backend
    for _ in range(2):  # the second request is verified against the remembered registration
        assert granted(token(origin, assertion(origin, client_id, old))) == set(SCOPE.split())
    new = jose.generate_private_jwk("ES384")
    _change(ehr, client_id, jwks=orjson.dumps(jose.public_jwks(new)).decode())
    refused(token(origin, assertion(origin, client_id, old)))
    assert granted(token(origin, assertion(origin, client_id, new))) == set(SCOPE.split())


def test_a_replayed_jti_is_refused_while_the_registration_is_remembered(
    origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, key = backend
    granted(token(origin, assertion(origin, client_id, key)))
    signed = assertion(origin, client_id, key)
    granted(token(origin, signed))
    refused(token(origin, signed))


def test_a_narrowed_scope_counts_at_once(
    ehr: RunningStack, origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, key = backend
    assert granted(token(origin, assertion(origin, client_id, key))) == set(SCOPE.split())
    _change(ehr, client_id, scope="system/ImagingStudy.rs")
    assert granted(token(origin, assertion(origin, client_id, key))) == {"system/ImagingStudy.rs"}
    refused_scope = token(origin, assertion(origin, client_id, key), scope="system/Patient.rs")
    assert refused_scope.status_code == 400
    assert refused_scope.json()["error"] == "invalid_scope"


def test_a_disabled_client_is_refused_at_once(
    ehr: RunningStack, origin: str, backend: tuple[str, dict[str, Any]]
) -> None:
    client_id, key = backend
    granted(token(origin, assertion(origin, client_id, key)))
    disabled = ehr_cli(ehr, "clients", "disable", client_id)
    assert disabled.returncode == 0, disabled.stderr
    refused(token(origin, assertion(origin, client_id, key)))
