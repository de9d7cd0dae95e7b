"""AU-01 under SIGKILL: every answered request's audit record survives its process being killed.

Records are journaled before each response (common/audit_journal.py) and committed behind it; a
process killed right after answering leaves the uncommitted ones in its journal, which the next
process commits at startup. Checked on real processes: the imaging system (audit rows, and the
AuditEvents its publisher then sends to the EHR) and the EHR (its own AuditEvents).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.gate_stack import READ_ACCEPT, GateStack, start_gate_stack
from tests.imaging.gate.uids import first_instance

from imagebridge.apps.stack import start_service
from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id

ROUNDS = 8


@pytest.fixture(scope="module", params=["write", "fsync"])
def kill_stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GateStack]:
    """Both services as deployed by default, then with ``audit_fsync`` on (the journal fdatasynced
    before each response: the same records must survive, through the same replay)."""
    fsync = "true" if request.param == "fsync" else "false"
    yield from start_gate_stack(
        tmp_path_factory,
        "audit-sigkill",
        ehr_env={"IMAGEBRIDGE_EHR_AUDIT_FSYNC": fsync},
        IMAGEBRIDGE_IMAGING_AUDIT_FSYNC=fsync,
    )


def _rows(path: Any, sql: str, *args: object) -> list[sqlite3.Row]:
    """Straight from the database file: no settling of journals by this reader."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, args).fetchall()


def _by_token(events: list[dict[str, Any]], token: str) -> list[dict[str, Any]]:
    mark = f"{GRANT_URN}{token_id(token)}"
    return [e for e in events if any(mark in a.get("policy", []) for a in e["agent"])]


def test_imaging_records_survive_sigkill_and_reach_the_ehr(kill_stack: GateStack) -> None:
    stack = kill_stack.stack
    token = kill_stack.patient_token("alice")
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    base = kill_stack.dicomweb_base
    instance = f"{base}/studies/{alice.study}/series/{alice.series}/instances/{alice.instance}"
    headers = {"Authorization": f"Bearer {token}"}
    sent: list[int] = []
    with httpx.Client(timeout=60, headers=headers) as http:
        for _ in range(ROUNDS):  # streamed bodies first: their byte counts are journaled after them
            response = http.get(instance, headers={"Accept": READ_ACCEPT})
            assert response.status_code == 200
            sent.append(len(response.content))
        for _ in range(ROUNDS):
            metadata = http.get(
                f"{base}/studies/{alice.study}/metadata", headers={"Accept": "application/dicom+json"}
            )
            denied = http.get(
                f"{base}/studies/{bob.study}/metadata", headers={"Accept": "application/dicom+json"}
            )
            assert (metadata.status_code, denied.status_code) == (200, 404)
    assert stack.imaging is not None
    killed = stack.imaging.process.pid
    stack.imaging.kill()
    journal = stack.data_dir / "imaging" / "audit-journal"
    assert [p for p in journal.glob("*.journal") if f"-{killed}-" in p.name], "nothing left to replay"

    stack.start_imaging()  # ready only once its startup has replayed the dead journal
    assert not [p for p in journal.glob("*.journal") if f"-{killed}-" in p.name]
    rows = _rows(
        stack.imaging_settings.data_dir / "imaging.sqlite3",
        "SELECT operation, status, bytes_sent, streaming, patient FROM audit WHERE token_id = ? ORDER BY id",
        token_id(token),
    )
    assert len(rows) == 3 * ROUNDS
    retrievals = [r for r in rows if r["operation"] == "retrieve"]
    assert [(r["status"], r["bytes_sent"], r["streaming"]) for r in retrievals] == [(200, n, 0) for n in sent]
    assert (
        sorted(r["status"] for r in rows if r["operation"] == "metadata") == [200] * ROUNDS + [404] * ROUNDS
    )
    assert {r["patient"] for r in rows} == {"alice"}

    deadline = time.monotonic() + 90
    while len(_by_token(kill_stack.access_report("alice"), token)) < 3 * ROUNDS:
        assert time.monotonic() < deadline, "the replayed records did not reach the EHR"
        time.sleep(1.0)
    assert len(_by_token(kill_stack.access_report("alice"), token)) == 3 * ROUNDS  # each once


def test_ehr_audit_events_survive_sigkill(kill_stack: GateStack) -> None:
    stack = kill_stack.stack
    token = kill_stack.patient_token("alice", "launch/patient patient/ImagingStudy.rs patient/Patient.rs")
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(ROUNDS):  # searches (their disclosures are completed behind the response)
            assert (
                http.get(f"{kill_stack.fhir_base}/ImagingStudy", params={"patient": "alice"}).status_code
                == 200
            )
        for _ in range(ROUNDS):  # reads
            assert http.get(f"{kill_stack.fhir_base}/Patient/alice").status_code == 200
    assert stack.ehr is not None
    stack.ehr.kill()

    stack.ehr = start_service("ehr", stack.ehr_env(), stack.ehr.url, stack.data_dir / "ehr.log")
    rows = _rows(
        stack.ehr_settings.data_dir / "ehr.sqlite3",
        "SELECT content FROM resources WHERE resource_type = 'AuditEvent' AND content LIKE ?",
        f"%{GRANT_URN}{token_id(token)}%",
    )
    assert len(rows) == 2 * ROUNDS
    assert len(_by_token(kill_stack.access_report("alice"), token)) == 2 * ROUNDS
