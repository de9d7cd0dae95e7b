"""Spoofed identity and proxy headers (security.md §2: RS-10) against the running pair: with
Alice's token, headers naming another user, patient, client address or host change nothing; every
URL either service hands out starts with its configured public URL (a URL following a forged host
would take the bearer token there)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
from tests.gate_stack import READ_ACCEPT, GateStack
from tests.imaging.gate.uids import first_instance

SPOOFED = {
    "X-Forwarded-User": "Patient/bob",
    "X-Patient-ID": "bob",
    "X-Forwarded-For": "10.0.0.66",
    "Forwarded": 'for=10.0.0.66;host=evil.example;proto=https, for="[2001:db8::66]"',
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "443",
    "X-Original-URL": "/dicom-web/studies?PatientID=bob",
}
EVIL = b"evil.example"


def _urls(value: Any) -> list[str]:
    """Every string value in a JSON document that looks like an absolute URL."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in _urls(v)]
    if isinstance(value, list):
        return [u for v in value for u in _urls(v)]
    return [value] if isinstance(value, str) and value.startswith(("http://", "https://")) else []


def test_rs10_imaging_ignores_spoofed_identity_and_host(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice")
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    base = gate_stack.dicomweb_base
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=60) as http:
        plain = http.get(f"{base}/studies", headers=auth)
        spoofed_headers = {**auth, **SPOOFED}
        for host in (None, "evil.example"):
            headers = spoofed_headers | ({"Host": host} if host else {})
            studies = http.get(f"{base}/studies", headers=headers)
            assert studies.status_code == 200
            assert studies.json() == plain.json()  # Alice's studies, and only hers
            assert {s["00100020"]["Value"][0] for s in studies.json()} == {alice.patient_id}
            metadata = http.get(f"{base}/studies/{alice.study}/metadata", headers=headers)
            assert metadata.status_code == 200
            bulk = [u for u in _urls(metadata.json()) if "/dicom-web/" in u]
            retrieve = _urls(studies.json())
            assert bulk
            assert retrieve
            for url in bulk + retrieve:
                assert url.startswith(f"{base}/"), url
            for response in (studies, metadata):
                assert EVIL not in response.content
            other = http.get(
                f"{base}/studies/{bob.study}/series/{bob.series}/instances/{bob.instance}",
                headers={**headers, "Accept": READ_ACCEPT},
            )
            assert other.status_code == 404
            bob_search = http.get(f"{base}/studies", params={"PatientID": bob.patient_id}, headers=headers)
            assert bob_search.status_code in (200, 204)
            assert bob.patient_id.encode() not in bob_search.content
    identities = {(r.client_id, r.user, r.patient) for r in gate_stack.audit_rows(token)}
    assert identities == {("demo-app", f"{gate_stack.fhir_base}/Patient/alice", "alice")}


def test_rs10_ehr_links_ignore_spoofed_host(gate_stack: GateStack) -> None:
    token = gate_stack.patient_token("alice", "launch/patient patient/ImagingStudy.rs patient/Endpoint.rs")
    fhir = gate_stack.fhir_base
    origin = fhir.removesuffix("/fhir")
    with httpx.Client(timeout=60) as http:
        for host in (None, "evil.example"):
            headers = {"Authorization": f"Bearer {token}", **SPOOFED} | ({"Host": host} if host else {})
            bundle = http.get(
                f"{fhir}/ImagingStudy",
                params={"patient": "bob", "_include": "ImagingStudy:endpoint", "_count": "1"},
                headers=headers,
            )
            assert bundle.status_code in (200, 403), bundle.text
            own = http.get(
                f"{fhir}/ImagingStudy",
                params={"_include": "ImagingStudy:endpoint", "_count": "1"},
                headers=headers,
            )
            assert own.status_code == 200, own.text
            body = own.json()
            subjects = {
                e["resource"]["subject"]["reference"]
                for e in body["entry"]
                if e["resource"]["resourceType"] == "ImagingStudy"
            }
            assert subjects == {"Patient/alice"}
            addresses = [
                e["resource"]["address"] for e in body["entry"] if e["resource"]["resourceType"] == "Endpoint"
            ]
            assert addresses
            assert all(a == gate_stack.dicomweb_base for a in addresses), addresses
            links = [link["url"] for link in body["link"]] + [e["fullUrl"] for e in body["entry"]]
            assert any(link["relation"] == "next" for link in body["link"])
            for url in links:
                assert url.startswith(f"{fhir}/"), url
            config = http.get(f"{fhir}/.well-known/smart-configuration", headers=headers).json()
            endpoints = [v for k, v in config.items() if k.endswith("_endpoint") or k == "issuer"]
            endpoints += [e["url"] for e in config.get("associated_endpoints", [])]
            assert endpoints
            for url in endpoints:  # its own endpoints, and the imaging system's base
                assert url.startswith((f"{origin}/", gate_stack.dicomweb_base)), url
            for response in (bundle, own):
                assert EVIL not in response.content
            assert "evil.example" not in json.dumps(config)


def test_rs10_bulk_manifest_ignores_spoofed_host(gate_stack: GateStack) -> None:
    token = gate_stack.backend_token("system/ImagingStudy.rs system/Patient.rs")
    fhir = gate_stack.fhir_base
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/fhir+json",
        "Prefer": "respond-async",
        **SPOOFED,
        "Host": "evil.example",
    }
    with httpx.Client(timeout=60) as http:
        kick = http.get(f"{fhir}/Group/quality-review/$export", params={"_type": "Patient"}, headers=headers)
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["content-location"]
        assert status_url.startswith(f"{fhir}/")
        for _ in range(600):
            done = http.get(status_url, headers=headers)
            if done.status_code != 202:
                break
            time.sleep(0.1)
    assert done.status_code == 200, done.text
    manifest = done.json()
    assert manifest["request"] == f"{fhir}/Group/quality-review/$export?_type=Patient"
    assert manifest["output"]
    for item in manifest["output"]:
        assert item["url"].startswith(f"{fhir}/"), item
    assert EVIL not in done.content
