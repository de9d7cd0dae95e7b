"""EHR launch (SMART App Launch 2.2 "EHR Launch"), zero-click for a pre-approved app; AS-30 launch cases."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import update
from tests.conftest import RunningStack
from tests.ehr.smart.flow import App, UserAgent, csrf_of, exchange, pkce, query_of, signed_in
from tests.ehr.smart.flow import add_launchable as launchable

from imagebridge.common import db
from imagebridge.ehr.tables import launches

SCOPE = "launch openid fhirUser patient/Patient.rs patient/ImagingStudy.rs"


def add_launchable(ehr: RunningStack, *, zero_click: bool) -> App:
    name = f"app-{secrets.token_hex(4)}"
    return launchable(ehr.stack.ehr_settings, SCOPE, f"https://{name}.example", zero_click=zero_click)


@pytest.fixture(scope="module")
def viewer(ehr: RunningStack) -> App:
    return add_launchable(ehr, zero_click=True)


@pytest.fixture(scope="module")
def chen(origin: str) -> Iterator[UserAgent]:
    with signed_in(origin, "dr-chen", "chen-demo-2024") as ua:
        yield ua


def launch(ua: UserAgent, app: App, patient: str = "alice") -> dict[str, str]:
    chart = ua.http.get(f"/ui/chart/{patient}")
    assert chart.status_code == 200
    assert f'data-client="{app.client_id}"' in chart.text
    sent = ua.http.post(
        f"/ui/chart/{patient}/launch", data={"csrf": csrf_of(chart), "client_id": app.client_id}
    )
    assert sent.status_code == 303
    assert sent.headers["location"].startswith(app.redirect_uri.removesuffix("/cb") + "/launch?")
    return query_of(sent.headers["location"])


def test_zero_click_launch_carries_the_chart_patient(
    chen: UserAgent, viewer: App, origin: str, fhir_base: str
) -> None:
    params = launch(chen, viewer)
    assert params["iss"] == fhir_base
    verifier, challenge = pkce()
    done = chen.authorize(viewer, SCOPE, aud=params["iss"], challenge=challenge, launch=params["launch"])
    assert done.status_code == 303  # no consent page
    assert done.headers["location"].startswith(viewer.redirect_uri + "?")
    token = exchange(origin, viewer, query_of(done.headers["location"])["code"], verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["patient"] == "alice"
    assert body["need_patient_banner"] is True
    style = httpx.get(body["smart_style_url"])
    assert style.status_code == 200
    assert "color_background" in style.json()


def test_not_pre_approved_app_asks(chen: UserAgent, ehr: RunningStack, fhir_base: str) -> None:
    app = add_launchable(ehr, zero_click=False)
    params = launch(chen, app, "bob")
    _, challenge = pkce()
    page = chen.authorize(app, SCOPE, aud=fhir_base, challenge=challenge, launch=params["launch"])
    assert page.status_code == 200
    assert 'name="decision"' in page.text
    assert "Bob Baker" in page.text


def _rejected(page: httpx.Response, app: App) -> None:
    assert page.status_code == 303
    params = query_of(page.headers["location"])
    assert page.headers["location"].startswith(app.redirect_uri + "?")
    assert params["error"] == "invalid_request"
    assert "code" not in params


def test_as30_reused_forged_foreign_and_expired_launch(
    chen: UserAgent, viewer: App, origin: str, fhir_base: str, ehr: RunningStack
) -> None:
    _, challenge = pkce()
    params = launch(chen, viewer)
    assert (
        chen.authorize(viewer, SCOPE, aud=fhir_base, challenge=challenge, launch=params["launch"]).status_code
        == 303
    )
    _rejected(
        chen.authorize(viewer, SCOPE, aud=fhir_base, challenge=challenge, launch=params["launch"]), viewer
    )
    _rejected(chen.authorize(viewer, SCOPE, aud=fhir_base, challenge=challenge, launch="forged"), viewer)
    foreign = launch(chen, viewer)["launch"]
    with signed_in(origin, "dr-chen", "chen-demo-2024") as other_session:
        _rejected(
            other_session.authorize(viewer, SCOPE, aud=fhir_base, challenge=challenge, launch=foreign), viewer
        )
    other_app = add_launchable(ehr, zero_click=True)
    for_viewer = launch(chen, viewer)["launch"]
    _rejected(
        chen.authorize(other_app, SCOPE, aud=fhir_base, challenge=challenge, launch=for_viewer), other_app
    )
    stale = launch(chen, viewer)["launch"]

    async def expire() -> None:
        engine = db.create_engine(ehr.stack.ehr_settings.resolved_database_url)
        async with engine.begin() as conn:
            await conn.execute(update(launches).values(expires_at=0))
        await engine.dispose()

    asyncio.run(expire())
    _rejected(chen.authorize(viewer, SCOPE, aud=fhir_base, challenge=challenge, launch=stale), viewer)


def test_patients_cannot_launch(origin: str, viewer: App) -> None:
    with signed_in(origin, "alice", "alice-demo-2024") as alice:
        assert alice.http.get("/ui/chart/alice").status_code == 404
        apps = alice.http.get("/ui/apps")
        sent = alice.http.post(
            "/ui/chart/alice/launch", data={"csrf": csrf_of(apps), "client_id": viewer.client_id}
        )
        assert sent.status_code == 403
