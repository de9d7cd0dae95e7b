"""AU-08 (security.md §6): authorization events audited by the EHR — registration, consent granted
(with the scopes) and denied, token issued, refreshed and revoked — as AuditEvents that carry the
token's id and never a token or code."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import orjson
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import get, issue
from tests.ehr.smart.flow import (
    App,
    UserAgent,
    exchange,
    pkce,
    query_of,
    refresh,
    register_public,
    standalone,
)

from imagebridge.apps.smart_client import backend_token
from imagebridge.common import jose
from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.audit import EHR_EVENT
from imagebridge.ehr.fhir.store import Query
from imagebridge.ehr.smart.client_assertion import REPLAYED

SCOPE = "launch/patient offline_access patient/Patient.rs patient/ImagingStudy.rs"


def _events(ehr: RunningStack) -> list[dict[str, Any]]:
    """Every AuditEvent, read from the EHR's database once its queue is written: an API read of
    AuditEvents waits for it."""
    token = issue(ehr, "demo-app", "patient/AuditEvent.rs", patient="alice", fhir_user="Patient/alice")
    assert get(ehr, "AuditEvent", token, patient="alice", _count="1").status_code == 200

    async def run() -> list[dict[str, Any]]:
        admin = Admin(ehr.stack.ehr_settings)
        try:
            found, _ = await admin.store.search(Query("AuditEvent", count=100_000))
            return found
        finally:
            await admin.close()

    return asyncio.run(run())


def _of(events: list[dict[str, Any]], client_id: str) -> dict[str, list[dict[str, Any]]]:
    by_code: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        clients = {a["who"].get("identifier", {}).get("value") for a in event["agent"]}
        subtype = event["subtype"][0]
        if client_id in clients and subtype["system"] == EHR_EVENT:
            by_code.setdefault(subtype["code"], []).append(event)
    return by_code


def _patients(event: dict[str, Any]) -> set[str]:
    return {x["what"]["reference"] for x in event["entity"] if x.get("what", {}).get("reference")}


def test_au08_grant_lifecycle_is_audited_without_secrets(
    ehr: RunningStack, origin: str, fhir_base: str
) -> None:
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(
            ua, app, fhir_base, "alice", "alice-demo-2024", SCOPE, untick=("patient/ImagingStudy.rs",)
        )
        denied = _deny(ua, app, fhir_base)
    assert denied["error"] == "access_denied"
    body = exchange(origin, app, done.params["code"], done.verifier).json()
    renewed = refresh(origin, app, body["refresh_token"]).json()
    revoked = httpx.post(
        f"{origin}/auth/revoke",
        data={
            "token": renewed["refresh_token"],
            "token_type_hint": "refresh_token",
            "client_id": app.client_id,
        },
    )
    assert revoked.status_code == 200
    events = _events(ehr)
    mine = _of(events, app.client_id)
    assert {k: len(v) for k, v in mine.items()} == {
        "registration-changed": 1,
        "consent-granted": 1,
        "consent-denied": 1,
        "token-issued": 1,
        "token-refreshed": 1,
        "token-revoked": 1,
    }
    [granted] = mine["consent-granted"]
    assert "patient/ImagingStudy.rs" not in granted["outcomeDesc"].split("(")[0]  # the untick is recorded
    assert "requested" in granted["outcomeDesc"]
    assert _patients(granted) == {"Patient/alice"}
    assert {"reference": "Patient/alice"} in [a["who"] for a in granted["agent"]]
    [issued] = mine["token-issued"]
    assert f"{GRANT_URN}{token_id(body['access_token'])}" in issued["agent"][0]["policy"]
    assert [e["agent"][0]["policy"] for e in mine["token-refreshed"]] == [
        [f"{GRANT_URN}{token_id(renewed['access_token'])}"]
    ]
    assert [e["agent"][0]["policy"] for e in mine["token-revoked"]] == [
        [f"{GRANT_URN}{token_id(renewed['refresh_token'])}"]
    ]
    text = orjson.dumps([e for v in mine.values() for e in v]).decode()
    for secret in (body["access_token"], body["refresh_token"], renewed["access_token"], done.params["code"]):
        assert secret not in text  # AU-03


def test_au08_backend_token_is_audited(ehr: RunningStack) -> None:
    client = ehr.seeded.clients["quality-review"]
    with httpx.Client(timeout=30) as http:
        token = backend_token(ehr.fhir_base, client.backend, client.scope, http)["access_token"]
    issued = _of(_events(ehr), "quality-review")["token-issued"]
    [mine] = [e for e in issued if f"{GRANT_URN}{token_id(token)}" in e["agent"][0].get("policy", [])]
    assert mine["outcomeDesc"] == f"scope: {client.scope}"
    assert token not in orjson.dumps(mine).decode()


def _deny(ua: UserAgent, app: App, fhir_base: str) -> dict[str, str]:
    """Ask again and press "Deny" on the consent page."""
    _, challenge = pkce()
    page = ua.authorize(app, SCOPE, aud=fhir_base, challenge=challenge)
    answer = ua.submit(page, {"decision": "deny"})
    assert answer.status_code == 303, answer.text
    return query_of(answer.headers["location"])


def test_au02_refused_token_requests_are_audited_and_raise_one_alert(ehr: RunningStack, origin: str) -> None:
    """AU-02: failed client authentication and jti replays are AuditEvents with outcome 4 (minor
    failure); the tenth refusal within 5 minutes for one claimed client raises one Security Alert
    (DCM 110113), not one per refusal."""
    token_url = f"{origin}/auth/token"
    client = ehr.seeded.clients["quality-review"]
    assert client.private_jwk is not None
    form = {
        "grant_type": "client_credentials",
        "scope": "system/ImagingStudy.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    assertion = jose.client_assertion(client.client_id, token_url, client.private_jwk)
    first = httpx.post(token_url, data={**form, "client_assertion": assertion})
    replayed = httpx.post(token_url, data={**form, "client_assertion": assertion})
    assert (first.status_code, replayed.status_code) == (200, 401)

    prober = f"prober-{uuid.uuid4().hex[:8]}"
    stranger = jose.generate_private_jwk("ES384")
    for _ in range(12):
        forged = jose.client_assertion(prober, token_url, stranger)
        assert httpx.post(token_url, data={**form, "client_assertion": forged}).status_code == 401

    events = _events(ehr)
    refusals = _of(events, client.client_id).get("token-refused", [])
    replays = [e for e in refusals if REPLAYED in json.dumps(e)]
    assert replays, "the jti replay is not in the audit trail"
    probes = _of(events, prober)
    assert len(probes["token-refused"]) == 12
    assert {e["outcome"] for e in probes["token-refused"]} == {"4"}
    alerts = [e for e in probes.get("repeated-refusals", []) if "this client" in json.dumps(e)]
    assert len(alerts) == 1
    assert alerts[0]["type"]["code"] == "110113"
    assert assertion not in json.dumps(events)  # never the assertion itself
