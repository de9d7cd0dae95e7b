"""RFC 7592 client configuration (read, update, delete with the registration access token) and the
per-IP rate limit of RFC 7591 registration, attacked against the running EHR (AS-11 for the
redirect-URI and scope rules a PUT must keep)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import own_ehr
from tests.ehr.smart.flow import App, code_for, exchange, refresh, register, signed_in

from imagebridge.apps.stack import LocalStack
from imagebridge.common import db
from imagebridge.common.tokens import digest
from imagebridge.ehr.tables import clients

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs"


def registered(origin: str, **extra: Any) -> dict[str, Any]:
    response = register(origin, redirect_uris=["https://cfg.example/cb"], client_name="Config app", **extra)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def metadata_of(info: dict[str, Any]) -> dict[str, Any]:
    """What a client sends back in a PUT: its metadata without our server-issued members."""
    return {
        k: v for k, v in info.items() if k not in ("registration_access_token", "registration_client_uri")
    }


def test_registration_answers_with_a_management_token(ehr: RunningStack, origin: str) -> None:
    info = registered(origin)
    assert info["registration_client_uri"] == f"{origin}/auth/register/{info['client_id']}"
    assert len(info["registration_access_token"]) >= 43  # 256 bits

    async def stored() -> str:
        engine = db.create_engine(ehr.stack.ehr_settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(clients.c.registration_token).where(clients.c.client_id == info["client_id"])
                    )
                ).one()
            return str(row.registration_token)
        finally:
            await engine.dispose()

    assert asyncio.run(stored()) == digest(info["registration_access_token"])  # only its digest is kept


def test_read_rotates_the_token(origin: str) -> None:
    info = registered(origin)
    uri, token = info["registration_client_uri"], info["registration_access_token"]
    read = httpx.get(uri, headers=bearer(token))
    assert read.status_code == 200
    assert read.headers["cache-control"] == "no-store"
    body = read.json()
    assert metadata_of(body) == metadata_of(info)
    assert body["registration_access_token"] != token
    assert httpx.get(uri, headers=bearer(token)).status_code == 401  # the old token is used up
    assert httpx.get(uri, headers=bearer(body["registration_access_token"])).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Authorization": "Bearer"},
    ],
    ids=["none", "wrong", "basic", "empty"],
)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_or_missing_token_is_401(origin: str, method: str, headers: dict[str, str]) -> None:
    info = registered(origin)
    response = httpx.request(method, info["registration_client_uri"], headers=headers, json=metadata_of(info))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "client_id" not in response.text
    # nothing changed: the real token still reads the registration
    assert (
        httpx.get(
            info["registration_client_uri"], headers=bearer(info["registration_access_token"])
        ).status_code
        == 200
    )


def test_one_token_one_use_even_concurrently(origin: str) -> None:
    info = registered(origin)
    with ThreadPoolExecutor(8) as pool:
        reads = list(
            pool.map(
                lambda _: httpx.get(
                    info["registration_client_uri"], headers=bearer(info["registration_access_token"])
                ),
                range(8),
            )
        )
    winners = [r for r in reads if r.status_code == 200]
    assert len(winners) == 1
    assert {r.status_code for r in reads} == {200, 401}
    assert (
        httpx.get(
            info["registration_client_uri"], headers=bearer(winners[0].json()["registration_access_token"])
        ).status_code
        == 200
    )


def test_another_clients_token_is_refused(origin: str) -> None:
    mine, theirs = registered(origin), registered(origin)
    uri = mine["registration_client_uri"]
    for method in ("GET", "PUT", "DELETE"):
        response = httpx.request(
            method, uri, headers=bearer(theirs["registration_access_token"]), json=metadata_of(mine)
        )
        assert response.status_code == 401
    unknown = f"{origin}/auth/register/app-no-such-client"
    assert httpx.get(unknown, headers=bearer(theirs["registration_access_token"])).status_code == 401
    assert httpx.get(uri, headers=bearer(mine["registration_access_token"])).status_code == 200


def test_admin_registered_clients_cannot_be_managed(origin: str) -> None:
    """The seeded demo app and backend clients have no registration access token."""
    for client_id in ("demo-app", "quality-review", "imaging"):
        assert httpx.get(f"{origin}/auth/register/{client_id}", headers=bearer("x" * 43)).status_code == 401


def test_update_replaces_the_registration(origin: str) -> None:
    info = registered(origin)
    change = {
        **metadata_of(info),
        "client_name": "Renamed app",
        "redirect_uris": ["https://cfg.example/new-cb", "http://127.0.0.1:7000/cb"],
        "scope": "openid fhirUser launch/patient patient/Patient.rs",
    }
    updated = httpx.put(
        info["registration_client_uri"], headers=bearer(info["registration_access_token"]), json=change
    )
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["client_name"] == "Renamed app"
    assert body["redirect_uris"] == change["redirect_uris"]
    assert set(body["scope"].split()) == set(change["scope"].split())
    assert (
        httpx.get(
            info["registration_client_uri"], headers=bearer(info["registration_access_token"])
        ).status_code
        == 401
    )
    # the old redirect URI is no longer registered
    authorize = httpx.get(
        f"{origin}/auth/authorize",
        params={
            "client_id": info["client_id"],
            "redirect_uri": "https://cfg.example/cb",
            "response_type": "code",
        },
    )
    assert authorize.status_code == 400
    assert "location" not in authorize.headers


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://cfg.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://*.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"client_id": "demo-app"}, "invalid_client_metadata"),
        ({"client_id": None}, "invalid_client_metadata"),
        ({"client_secret": "chosen-by-me"}, "invalid_client_metadata"),
        ({"grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({"jwks_uri": "http://169.254.169.254/latest/meta-data"}, "invalid_client_metadata"),
        ({"scope": "patient/Patient.rs?"}, "invalid_client_metadata"),
    ],
    ids=[
        "http-redirect",
        "fragment",
        "wildcard",
        "javascript",
        "no-redirect",
        "other-client-id",
        "missing-client-id",
        "client-secret",
        "client-credentials",
        "symmetric-auth",
        "public-with-keys",
        "bad-scope",
    ],
)
def test_update_is_validated_like_a_registration(origin: str, change: dict[str, Any], error: str) -> None:
    """AS-11: a PUT may not bring back what registration refuses; a refused PUT changes nothing."""
    info = registered(origin)
    body = {**metadata_of(info), **change}
    if body.get("client_id") is None:
        body.pop("client_id", None)
    response = httpx.put(
        info["registration_client_uri"], headers=bearer(info["registration_access_token"]), json=body
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    read = httpx.get(info["registration_client_uri"], headers=bearer(info["registration_access_token"]))
    assert read.status_code == 200  # the token was not used up by the refused PUT
    assert metadata_of(read.json()) == metadata_of(info)


def test_update_never_widens_scope_beyond_policy(origin: str) -> None:
    info = registered(origin, scope="openid fhirUser launch/patient patient/Patient.rs")
    wider = {
        **metadata_of(info),
        "scope": "openid fhirUser launch/patient patient/*.cruds system/*.cruds user/*.cruds introspection",
    }
    response = httpx.put(
        info["registration_client_uri"], headers=bearer(info["registration_access_token"]), json=wider
    )
    assert response.status_code == 200, response.text
    granted = set(response.json()["scope"].split())
    assert not any(s.startswith("system/") for s in granted)
    assert "introspection" not in granted
    assert granted <= {"openid", "fhirUser", "launch/patient", "patient/*.cruds", "user/*.cruds"}


def test_delete_disables_the_client_and_revokes_its_tokens(origin: str, fhir_base: str) -> None:
    info = registered(origin)
    app = App(info["client_id"], "https://cfg.example/cb")
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        body = exchange(origin, app, *code_for(alice, app, fhir_base, SCOPE)).json()
    auth = bearer(body["access_token"])
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 200
    deleted = httpx.delete(info["registration_client_uri"], headers=bearer(info["registration_access_token"]))
    assert deleted.status_code == 204
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 401
    assert refresh(origin, app, body["refresh_token"]).status_code in (400, 401)
    for method in ("GET", "PUT", "DELETE"):
        again = httpx.request(
            method,
            info["registration_client_uri"],
            headers=bearer(info["registration_access_token"]),
            json=metadata_of(info),
        )
        assert again.status_code == 401
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        page = alice.authorize(app, SCOPE, aud=fhir_base, challenge="x" * 43)
    assert page.status_code == 400  # unknown application: no redirect
    assert "location" not in page.headers


# Rate limiting of registration, on an EHR of its own with a small budget.

LIMIT = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with own_ehr(tmp_path_factory.mktemp("register-limit"), registration_rate_limit=LIMIT) as stack:
        yield stack


def client_at(address: str) -> httpx.Client:
    """An HTTP client whose requests come from ``address`` (any 127.0.0.0/8 address is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def test_registration_rate_limit_trips_per_address(limited: LocalStack) -> None:
    url = f"{limited.ehr_settings.origin}/auth/register"
    good = {"redirect_uris": ["https://limited.example/cb"]}
    with client_at("127.0.0.2") as flooder, client_at("127.0.0.3") as bystander:
        statuses = [flooder.post(url, json=good).status_code for _ in range(LIMIT - 1)]
        statuses.append(
            flooder.post(url, content=b"not json", headers={"content-type": "application/json"}).status_code
        )
        assert statuses == [201] * (LIMIT - 1) + [400]  # failures count too
        refused = flooder.post(url, json=good)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["error"] == "slow_down"
        assert "client_id" not in refused.json()
        assert bystander.post(url, json=good).status_code == 201  # another address is unaffected
        forwarded = flooder.post(
            url, json=good, headers={"X-Forwarded-For": "10.9.8.7", "Forwarded": "for=10.9.8.7"}
        )
        assert forwarded.status_code == 429  # forwarding headers do not reset the budget
