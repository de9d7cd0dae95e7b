"""Bulk Data export end to end (spec.md §5): kick-off, poll, download, cancel, with and without a
token, filtered by the same policy engine as the FHIR API."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import get, issue

from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id

SCOPE = "system/ImagingStudy.rs system/Patient.rs system/DiagnosticReport.rs"
ASYNC = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def _auth(token: str) -> dict[str, str]:
    return {**ASYNC, "Authorization": f"Bearer {token}"}


def _wait(http: httpx.Client, status_url: str, token: str) -> httpx.Response:
    for _ in range(600):
        response = http.get(status_url, headers=_auth(token))
        if response.status_code != 202:
            return response
        assert response.headers["retry-after"].isdigit()
        assert "x-progress" in response.headers
        time.sleep(0.1)
    raise AssertionError("export did not finish")


def _export(running: RunningStack, path: str, token: str, **params: str) -> dict[str, Any]:
    with httpx.Client(timeout=30) as http:
        kick = http.get(f"{running.fhir_base}/{path}", params=params, headers=_auth(token))
        assert kick.status_code == 202, kick.text
        done = _wait(http, kick.headers["content-location"], token)
        assert done.status_code == 200
        assert done.headers["content-type"].startswith("application/json")
        return dict(done.json())


def test_group_export_end_to_end(running: RunningStack) -> None:
    token = issue(running, "quality-review", SCOPE)
    manifest = _export(running, "Group/quality-review/$export", token, _type="Patient,ImagingStudy")
    assert manifest["requiresAccessToken"] is True
    assert (
        manifest["request"].endswith("$export?_type=Patient%2CImagingStudy")
        or "_type=" in manifest["request"]
    )
    assert {"transactionTime", "request", "requiresAccessToken", "output", "error"} <= set(manifest)
    by_type: dict[str, list[dict[str, Any]]] = {}
    with httpx.Client(timeout=30) as http:
        for item in manifest["output"]:
            assert http.get(item["url"]).status_code == 401  # behind the same token
            response = http.get(item["url"], headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/fhir+ndjson")
            rows = [orjson.loads(line) for line in response.text.splitlines() if line]
            assert all(r["resourceType"] == item["type"] for r in rows)
            assert len(rows) == item["count"]
            by_type[item["type"]] = rows
    assert {p["id"] for p in by_type["Patient"]} == {"alice"}
    assert {s["subject"]["reference"] for s in by_type["ImagingStudy"]} == {"Patient/alice"}
    assert len(by_type["ImagingStudy"]) == 4
    # AU-01/AU-07: each download is in Alice's access report, naming what left in it
    reader = issue(running, "demo-app", "patient/AuditEvent.rs", patient="alice", fhir_user="Patient/alice")
    report = get(running, "AuditEvent", reader, patient="alice", _count="1000").json()
    mark = f"{GRANT_URN}{token_id(token)}"
    downloads = [
        e["resource"]
        for e in report["entry"]
        if e["resource"]["type"]["code"] == "110106" and mark in e["resource"]["agent"][0].get("policy", [])
    ]
    named = {
        x["what"]["reference"] for e in downloads for x in e["entity"] if "reference" in x.get("what", {})
    }
    assert named == {"Patient/alice", *(f"ImagingStudy/{s['id']}" for s in by_type["ImagingStudy"])}


def test_patient_export_filters_by_policy(running: RunningStack) -> None:
    """A client may not export what it may not see: its Group limits Patient/$export too."""
    token = issue(running, "quality-review", SCOPE)
    manifest = _export(running, "Patient/$export", token, _type="ImagingStudy", _outputFormat="ndjson")
    with httpx.Client(timeout=30) as http:
        text = http.get(manifest["output"][0]["url"], headers={"Authorization": f"Bearer {token}"}).text
    subjects = {orjson.loads(line)["subject"]["reference"] for line in text.splitlines() if line}
    assert subjects == {"Patient/alice"}


def test_since_in_the_future_exports_nothing(running: RunningStack) -> None:
    token = issue(running, "quality-review", SCOPE)
    manifest = _export(running, "$export", token, _since="2999-01-01T00:00:00Z")
    assert manifest["output"] == []


def test_cancel_then_404(running: RunningStack) -> None:
    token = issue(running, "quality-review", SCOPE)
    with httpx.Client(timeout=30) as http:
        kick = http.get(f"{running.fhir_base}/Group/quality-review/$export", headers=_auth(token))
        status_url = kick.headers["content-location"]
        assert http.delete(status_url, headers=_auth(token)).status_code == 202
        gone = http.get(status_url, headers=_auth(token))
        assert gone.status_code == 404
        assert gone.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("Group/quality-review/$export", {"_outputFormat": "text/csv"}, 400),
        ("Group/quality-review/$export", {"_since": "yesterday"}, 400),
        ("Group/quality-review/$export", {"_type": "Nonsense"}, 400),
        ("Group/quality-review/$export", {"_type": "Consent"}, 403),
        ("Group/quality-review/$export", {"bogus": "1"}, 400),
        ("Group/someone-elses/$export", {}, 404),
    ],
)
def test_bad_kickoffs(running: RunningStack, path: str, params: dict[str, str], status: int) -> None:
    token = issue(running, "quality-review", SCOPE)
    response = httpx.get(f"{running.fhir_base}/{path}", params=params, headers=_auth(token))
    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"


def test_without_token(running: RunningStack) -> None:
    response = httpx.get(f"{running.fhir_base}/Group/quality-review/$export", headers=ASYNC)
    assert response.status_code == 401
    token = issue(running, "quality-review", SCOPE)
    with httpx.Client(timeout=30) as http:
        kick = http.get(f"{running.fhir_base}/$export", headers=_auth(token))
        assert http.get(kick.headers["content-location"], headers=ASYNC).status_code == 401
        other = issue(running, "demo-app", "patient/*.rs", patient="maya")
        assert http.get(kick.headers["content-location"], headers=_auth(other)).status_code == 404


def test_lenient_ignores_unknown_parameters(running: RunningStack) -> None:
    token = issue(running, "quality-review", SCOPE)
    response = httpx.get(
        f"{running.fhir_base}/Group/quality-review/$export",
        params={"bogus": "1"},
        headers={**_auth(token), "Prefer": "respond-async, handling=lenient"},
    )
    assert response.status_code == 202
