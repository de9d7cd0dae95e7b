"""Audit and secrets (security.md §6: AU-01, AU-03) against the gate stack.

After traffic on allowed, refused and hostile paths (a token in the URL included), every issued
secret — access and refresh tokens, client assertions, private keys — is searched for in both
services' logs and in every database file; none may appear. Every delivered response has its
committed audit record.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx
from tests.gate_stack import READ_ACCEPT, GateStack, access_line
from tests.imaging.gate.uids import first_instance

from imagebridge.common import jose
from imagebridge.common.tokens import token_id
from imagebridge.imaging.gate.audit import settle_journal


def _traffic(stack: GateStack) -> list[tuple[str, httpx.Response]]:
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    token = stack.patient_token("alice")
    backend = stack.backend_token()
    client = stack.seeded.clients["quality-review"]
    assert client.private_jwk is not None
    assertion = jose.client_assertion(client.client_id, f"{stack.fhir_base}/auth/token", client.private_jwk)
    stack.secrets.append(assertion)
    base = stack.dicomweb_base
    out = []
    with httpx.Client(timeout=30) as http:
        for path in (
            f"/studies/{alice.study}/series/{alice.series}/instances/{alice.instance}",
            f"/studies/{alice.study}/metadata",
            f"/studies/{bob.study}",
            "/studies?PatientID=*",
        ):
            for presented in (token, backend, assertion):
                response = http.get(
                    base + path, headers={"Authorization": f"Bearer {presented}", "Accept": READ_ACCEPT}
                )
                out.append((presented, response))
    return out


def _haystacks(stack: GateStack) -> dict[str, bytes]:
    data = stack.stack.data_dir
    files = [data / "ehr.log", data / "imaging.log"]
    files += [p for p in data.rglob("*") if p.is_file() and ".sqlite3" in p.name]
    return {str(p): p.read_bytes() for p in files}


def _private_key_values(stack: GateStack) -> list[str]:
    keys = [
        stack.stack.imaging_settings.private_key_file,
        *Path(stack.stack.data_dir / "client-keys").glob("*.json"),
    ]
    return [str(json.loads(k.read_text())["d"]) for k in keys if k.exists()]


def test_au03_no_issued_secret_in_any_log_or_database(gate_stack: GateStack) -> None:
    _traffic(gate_stack)
    with httpx.Client(timeout=30) as http:  # a token in the URL (RFC 6750 §5.3): logged redacted
        in_url = http.get(
            f"{gate_stack.dicomweb_base}/studies", params={"access_token": gate_stack.patient_token("alice")}
        )
    assert access_line(in_url) in gate_stack.imaging_log()
    secrets = [*gate_stack.secrets, *_private_key_values(gate_stack)]
    assert len(secrets) >= 6
    for name, content in _haystacks(gate_stack).items():
        for secret in secrets:
            assert secret.encode() not in content, f"a secret appears in {name}"


def test_au01_every_delivered_response_has_a_committed_record(gate_stack: GateStack) -> None:
    responses = _traffic(gate_stack)
    settle_journal(gate_stack.stack.imaging_settings)  # journaled records into the table
    path = gate_stack.stack.imaging_settings.data_dir / "imaging.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        for presented, response in responses:
            rows = conn.execute(
                "SELECT status, bytes_sent FROM audit WHERE token_id = ? AND status = ?",
                (token_id(presented), response.status_code),
            ).fetchall()
            assert rows, (response.request.url, response.status_code)
            if response.status_code == 200 and "multipart" in response.headers["content-type"]:
                assert any(sent == len(response.content) for _, sent in rows)
