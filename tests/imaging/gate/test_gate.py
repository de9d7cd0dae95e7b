"""The gate against the running pair (issue 6): single-flight, the revocation promise, every
route gated, and one committed audit record per decision."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx
from tests.gate_stack import READ_ACCEPT, REVOCATION_WINDOW, GateStack
from tests.imaging.gate.uids import first_instance

from imagebridge.common.tokens import digest, token_id
from imagebridge.imaging.dicomweb import routes as dicomweb_routes
from imagebridge.imaging.gate.audit import settle_journal


def instance_url(stack: GateStack, accession: str) -> str:
    uids = first_instance(accession)
    return f"{stack.dicomweb_base}/studies/{uids.study}/series/{uids.series}/instances/{uids.instance}"


def test_200_concurrent_requests_with_one_token_cause_one_introspection(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    url = instance_url(gate_stack, "ACC-1002")

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            headers = {"Authorization": f"Bearer {token}", "Accept": READ_ACCEPT}
            responses = await asyncio.gather(*(http.get(url, headers=headers) for _ in range(200)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 200
    assert gate_stack.proxy.calls[digest(token)] == 1


def test_revoked_token_is_refused_within_the_revocation_window(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    url = instance_url(gate_stack, "ACC-1002")
    headers = {"Authorization": f"Bearer {token}", "Accept": READ_ACCEPT}
    with httpx.Client(timeout=30) as http:
        assert http.get(url, headers=headers).status_code == 200
        gate_stack.revoke(token)
        time.sleep(REVOCATION_WINDOW + 0.2)  # the promise: refused once the window has passed
        refused = http.get(url, headers=headers)
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert b"DICM" not in refused.content


def _example_path(template: str) -> str:
    values = {
        "study": "2.25.1",
        "series": "2.25.2",
        "instance": "2.25.3",
        "frames": "1",
        "tagpath": "7FE00010",
    }
    path = template
    for name, value in values.items():
        path = path.replace(f"{{{name}:path}}", value).replace(f"{{{name}}}", value)
    assert "{" not in path, f"unknown path parameter in {template}"
    return path


def test_every_dicomweb_route_is_gated(gate_stack: GateStack) -> None:
    """Whatever routes are added, none answers without a token (ARCHITECTURE.md invariant 2)."""
    origin = gate_stack.stack.imaging_settings.origin
    checked = 0
    with httpx.Client(timeout=30) as http:
        for route in dicomweb_routes.routes:
            path = getattr(route, "path", None)
            methods = getattr(route, "methods", None) or {"GET"}
            if not path or not path.startswith(dicomweb_routes.BASE) or "{capability}" in path:
                continue  # capability routes: tests/imaging/gate/test_capability.py
            for method in sorted(set(methods) - {"HEAD"}):
                response = http.request(method, origin + _example_path(path))
                assert response.status_code == 401, (method, path, response.status_code)
                assert response.headers["www-authenticate"] == "Bearer", (method, path)
                checked += 1
    assert checked >= 10


def _audit_rows(stack: GateStack, token: str) -> list[sqlite3.Row]:
    settle_journal(stack.stack.imaging_settings)
    path = stack.stack.imaging_settings.data_dir / "imaging.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(
            "SELECT * FROM audit WHERE token_id = ? ORDER BY id", (token_id(token),)
        ).fetchall()


def test_every_decision_is_audited_with_bytes_and_without_the_token(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    alice = first_instance("ACC-1002")
    bob = first_instance("ACC-2001")
    headers = {"Authorization": f"Bearer {token}", "Accept": READ_ACCEPT}
    with httpx.Client(timeout=30) as http:
        allowed = http.get(instance_url(gate_stack, "ACC-1002"), headers=headers)
        denied = http.get(f"{gate_stack.dicomweb_base}/studies/{bob.study}", headers=headers)
        search = http.get(
            f"{gate_stack.dicomweb_base}/studies", headers={**headers, "Accept": "application/dicom+json"}
        )
    assert (allowed.status_code, denied.status_code, search.status_code) == (200, 404, 200)
    rows = _audit_rows(gate_stack, token)
    assert [(r["operation"], r["outcome"], r["status"]) for r in rows] == [
        ("retrieve", "allow", 200),
        ("retrieve", "deny", 404),
        ("search", "allow", 200),
    ]
    first = rows[0]
    assert (first["client_id"], first["patient"]) == ("demo-app", "alice")
    assert first["user"].endswith("Patient/alice")  # fhirUser, relative or absolute as the EHR says
    assert (first["study_uid"], first["series_uid"], first["sop_uid"]) == (
        alice.study,
        alice.series,
        alice.instance,
    )
    assert first["bytes_sent"] == len(allowed.content)
    assert rows[1]["study_uid"] == bob.study
    assert all(token not in str(tuple(r)) for r in rows)


def test_refusals_without_a_usable_token_are_audited(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("bob", scope="launch/patient patient/Observation.rs")
    with httpx.Client(timeout=30) as http:
        response = http.get(
            f"{gate_stack.dicomweb_base}/studies", headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 403
    rows = _audit_rows(gate_stack, token)
    assert [(r["operation"], r["outcome"], r["status"], r["detail"]) for r in rows] == [
        ("search", "deny", 403, "insufficient scope")
    ]


def test_audit_command_lists_a_patients_records(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    with httpx.Client(timeout=30) as http:
        http.get(instance_url(gate_stack, "ACC-1002"), headers={"Authorization": f"Bearer {token}"})
    listed = subprocess.run(
        [sys.executable, "-m", "imagebridge", "imaging", "audit", "--patient", "alice", "--json"],
        env={**os.environ, **gate_stack.stack.imaging_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert records
    assert {r["patient"] for r in records} == {"alice"}
    assert any(r["token_id"] == token_id(token) for r in records)
    assert token not in listed.stdout


def test_au02_repeated_refusals_raise_one_security_alert(gate_stack: GateStack) -> None:
    """AU-02 / ISO-06: a token probing another patient's study gets 404 each time, each refusal is
    a record, and the twentieth within a minute also journals one ``security-alert`` record
    (not one per refusal), published to the EHR as a DCM 110113 Security Alert AuditEvent."""
    token = gate_stack.patient_token("alice")
    bob = first_instance("ACC-2001")
    metadata = f"{gate_stack.dicomweb_base}/studies/{bob.study}/metadata"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
    with httpx.Client(timeout=30, headers=headers) as http:
        assert {http.get(metadata).status_code for _ in range(25)} == {404}
    rows = _audit_rows(gate_stack, token)
    assert [r["operation"] for r in rows if r["operation"] != "security-alert"] == ["metadata"] * 25
    alerts = [r for r in rows if r["operation"] == "security-alert"]
    assert len(alerts) == 1
    assert alerts[0]["detail"] == "20 refused requests within 60 s from this token"
    assert (alerts[0]["study_uid"], alerts[0]["outcome"]) == (bob.study, "deny")

    deadline = time.monotonic() + 90
    while True:
        published = [
            e
            for e in gate_stack.access_report("alice")
            if e["type"]["code"] == "110113" and token_id(token) in json.dumps(e)
        ]
        if published or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(published) == 1
