"""``online_access`` refresh tokens live with the user's EHR sign-in (SMART App Launch 2.2 "Scopes
for requesting a refresh token": "usable for as long as the end-user remains online"): signing out
or the session expiring ends them, a configurable ceiling caps them; ``offline_access`` ones go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import own_ehr
from tests.ehr.smart.flow import App, code_for, exchange, refresh, register_public, sign_out, signed_in

from imagebridge.apps.stack import LocalStack
from imagebridge.common import db
from imagebridge.common.tokens import digest
from imagebridge.ehr.tables import browser_sessions

ONLINE = "launch/patient openid fhirUser online_access patient/Patient.rs"
OFFLINE = "launch/patient openid fhirUser offline_access patient/Patient.rs"
#: The ceiling of the EHR started by ``short_online``, in seconds.
CEILING = 2


def tokens(origin: str, app: App, ua_code: tuple[str, str]) -> dict[str, str]:
    response = exchange(origin, app, *ua_code)
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    return body


def test_online_refresh_ends_when_the_user_signs_out(ehr: RunningStack, origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        online = tokens(origin, app, code_for(alice, app, fhir_base, ONLINE))
        offline = tokens(origin, app, code_for(alice, app, fhir_base, OFFLINE))
        assert "refresh_token" in online
        rotated = refresh(origin, app, online["refresh_token"])
        assert rotated.status_code == 200, rotated.text  # while Alice is signed in, it works
        online_rt = rotated.json()["refresh_token"]
        sign_out(alice)
    refused = refresh(origin, app, online_rt)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    assert "refresh_token" not in refused.json()
    assert refresh(origin, app, offline["refresh_token"]).status_code == 200  # offline_access is unaffected


def test_online_refresh_ends_when_the_session_expires(ehr: RunningStack, origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with signed_in(origin, "bob", "bob-demo-2024") as bob:
        online = tokens(origin, app, code_for(bob, app, fhir_base, ONLINE))
        cookie = bob.http.cookies["ib_session"]

        async def expire() -> None:
            engine = db.create_engine(ehr.stack.ehr_settings.resolved_database_url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        update(browser_sessions)
                        .where(browser_sessions.c.digest == digest(cookie))
                        .values(expires_at=time.time() - 1)
                    )
            finally:
                await engine.dispose()

        asyncio.run(expire())
        assert refresh(origin, app, online["refresh_token"]).status_code == 400


def test_no_online_refresh_token_once_signed_out_before_the_exchange(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with signed_in(origin, "maya", "maya-demo-2024") as maya:
        code = code_for(maya, app, fhir_base, ONLINE)
        sign_out(maya)
    body = tokens(origin, app, code)
    assert "access_token" in body
    assert "refresh_token" not in body


@pytest.fixture(scope="module")
def short_online(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with own_ehr(tmp_path_factory.mktemp("online-ceiling"), online_access_lifetime=CEILING) as stack:
        yield stack


def test_online_refresh_has_a_configurable_ceiling(short_online: LocalStack) -> None:
    origin, fhir_base = short_online.ehr_settings.origin, short_online.ehr_settings.fhir_base
    app = register_public(origin)
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        online = tokens(origin, app, code_for(alice, app, fhir_base, ONLINE))
        offline = tokens(origin, app, code_for(alice, app, fhir_base, OFFLINE))
        time.sleep(CEILING + 1)  # Alice is still signed in, but the ceiling has passed
        refused = refresh(origin, app, online["refresh_token"])
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_grant"
        assert refresh(origin, app, offline["refresh_token"]).status_code == 200
        assert alice.http.get("/ui/apps").status_code == 200  # still signed in
