"""The imaging audit trail published to the EHR as AuditEvents (security.md AU-06, AU-07).

Against a stack of its own whose imaging system runs two worker processes sharing the spool:
records reach the patient's access report at the EHR, each exactly once; with the EHR stopped
they stay in the spool and arrive after it returns, none lost and none twice.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select
from tests.gate_stack import GateStack, start_gate_stack
from tests.imaging.gate.fhir_proxy import FhirProxy
from tests.imaging.gate.uids import first_instance

from imagebridge.apps.stack import free_port, start_service
from imagebridge.common import db
from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id
from imagebridge.imaging.gate.audit import reader
from imagebridge.imaging.gate.audit_publish import BATCH, RECORD_SYSTEM
from imagebridge.imaging.tables import audit


@pytest.fixture(scope="module")
def fhir_proxy() -> Iterator[FhirProxy]:
    proxy = FhirProxy(free_port())
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def spool_stack(tmp_path_factory: pytest.TempPathFactory, fhir_proxy: FhirProxy) -> Iterator[GateStack]:
    """Two imaging workers whose FHIR calls to the EHR pass through ``fhir_proxy``."""
    yield from start_gate_stack(
        tmp_path_factory,
        "audit-spool",
        imaging_args=("--workers", "2"),
        ehr_port=fhir_proxy.ehr_port,
        IMAGEBRIDGE_IMAGING_EHR_FHIR_BASE=fhir_proxy.url,
    )


def _metadata(stack: GateStack, token: str) -> httpx.Response:
    study = first_instance("ACC-1002").study  # Alice's
    with httpx.Client(timeout=60) as http:
        return http.get(
            f"{stack.dicomweb_base}/studies/{study}/metadata",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        )


def _spool(stack: GateStack, since_id: int = 0) -> dict[int, bool]:
    """Audit row id → published, straight from the imaging database."""

    async def run() -> dict[int, bool]:
        engine = db.create_engine(stack.stack.imaging_settings.resolved_database_url, pool_size=1)
        try:
            await reader(engine, stack.stack.imaging_settings).settle()  # journaled records in
            async with engine.connect() as conn:
                rows = await conn.execute(select(audit.c.id, audit.c.published).where(audit.c.id > since_id))
                return {int(r.id): bool(r.published) for r in rows}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _last_id(stack: GateStack) -> int:
    async def run() -> int:
        engine = db.create_engine(stack.stack.imaging_settings.resolved_database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(select(func.coalesce(func.max(audit.c.id), 0)))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _record_keys(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        str(x["what"]["identifier"]["value"])
        for e in events
        for x in e["entity"]
        if x.get("what", {}).get("identifier", {}).get("system") == RECORD_SYSTEM
    )


def _wait(condition: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the spool did not drain in time"
        time.sleep(0.5)


def _published(stack: GateStack, ids: set[int]) -> bool:
    spool = _spool(stack, min(ids) - 1)
    return all(spool.get(i) for i in ids)


def test_au07_imaging_records_join_the_patients_access_report(spool_stack: GateStack) -> None:
    before = _last_id(spool_stack)
    token = spool_stack.patient_token("alice")
    assert _metadata(spool_stack, token).status_code == 200
    ids = set(_spool(spool_stack, before))
    assert ids
    _wait(lambda: _published(spool_stack, ids))
    keys = {f"imaging/{i}" for i in ids}
    events = [e for e in spool_stack.access_report("alice") if set(_record_keys([e])) & keys]
    assert len(events) == len(ids)
    event = events[0]
    assert event["type"]["code"] == "110103"  # DICOM Instances Accessed
    assert event["subtype"][0]["code"] == "metadata"
    assert event["action"] == "R"
    assert event["outcome"] == "0"
    client = next(a for a in event["agent"] if "identifier" in a["who"])
    assert client["who"]["identifier"]["value"] == "demo-app"
    assert client["policy"] == [f"{GRANT_URN}{token_id(token)}"]
    named = {x["what"].get("reference") for x in event["entity"]}
    assert "Patient/alice" in named
    assert any(str(r).startswith("ImagingStudy/") for r in named)  # the EHR resolved the study UID
    assert token not in orjson.dumps(event).decode()  # AU-03: the token's id only


def test_au06_ehr_down_spools_then_delivers_each_record_once(spool_stack: GateStack) -> None:
    stack = spool_stack.stack
    assert stack.ehr is not None
    before = _last_id(spool_stack)
    token = spool_stack.patient_token("alice")
    stack.ehr.stop()
    try:
        answers = [_metadata(spool_stack, token).status_code for _ in range(6)]
        assert answers == [503] * 6  # fail closed, and each refusal is a record to publish
        time.sleep(3)  # the publishers have tried meanwhile
        spool = _spool(spool_stack, before)
        assert len(spool) == 6
        assert not any(spool.values()), "nothing can be published while the EHR is down"
    finally:
        stack.ehr = start_service("ehr", stack.ehr_env(), stack.ehr.url, stack.ehr.log_path)
    ids = set(spool)
    _wait(lambda: _published(spool_stack, ids))
    counts = _record_keys(spool_stack.access_report("alice"))
    assert {key: counts[key] for key in (f"imaging/{i}" for i in ids)} == {f"imaging/{i}": 1 for i in ids}


def test_two_workers_publish_a_burst_exactly_once(spool_stack: GateStack) -> None:
    """Both worker processes write records; one publisher at a time drains them (the lease)."""
    before = _last_id(spool_stack)
    token = spool_stack.patient_token("alice")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: _metadata(spool_stack, token).status_code, range(40)))
    assert statuses == [200] * 40
    ids = set(_spool(spool_stack, before))
    assert len(ids) == 40
    _wait(lambda: _published(spool_stack, ids))
    counts = _record_keys(spool_stack.access_report("alice"))
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert all(counts[f"imaging/{i}"] == 1 for i in ids)


def test_a_lost_answer_is_retried_without_a_second_copy(
    spool_stack: GateStack, fhir_proxy: FhirProxy
) -> None:
    """The EHR committed a batch of AuditEvents but its answer never arrived: the imaging system
    sends the batch again, each entry with ``ifNoneExist`` on the record's identifier, and the EHR
    keeps one copy of each."""
    before = _last_id(spool_stack)
    token = spool_stack.patient_token("alice")
    fhir_proxy.lose, fhir_proxy.lost = 2, 0
    assert [_metadata(spool_stack, token).status_code for _ in range(3)] == [200] * 3
    ids = set(_spool(spool_stack, before))
    assert len(ids) == 3
    _wait(lambda: _published(spool_stack, ids))
    assert fhir_proxy.lost == 2, "the answers were lost after the EHR had committed"
    counts = _record_keys(spool_stack.access_report("alice"))
    assert {key: counts[key] for key in (f"imaging/{i}" for i in ids)} == {f"imaging/{i}": 1 for i in ids}


def _batch_posts(stack: GateStack) -> int:
    """``POST [base]`` requests the EHR has answered, from its own access log (uvicorn)."""
    assert stack.stack.ehr is not None
    return stack.stack.ehr.log().count('"POST /fhir HTTP/1.1"')


def test_records_reach_the_ehr_in_batches(spool_stack: GateStack) -> None:
    """150 records spooled while the EHR is down reach it in ceil(150 / 100) = 2 batch Bundles,
    counted in the EHR's access log, each record once."""
    stack = spool_stack.stack
    assert stack.ehr is not None
    before, posts = _last_id(spool_stack), _batch_posts(spool_stack)
    token = spool_stack.patient_token("alice")
    stack.ehr.stop()
    try:
        assert {_metadata(spool_stack, token).status_code for _ in range(150)} == {503}
        ids = set(_spool(spool_stack, before))
        assert len(ids) == 150
    finally:
        stack.ehr = start_service("ehr", stack.ehr_env(), stack.ehr.url, stack.ehr.log_path)
    _wait(lambda: _published(spool_stack, ids))
    assert _batch_posts(spool_stack) - posts == math.ceil(150 / BATCH) == 2
    counts = _record_keys(spool_stack.access_report("alice"))
    assert {key: counts[key] for key in (f"imaging/{i}" for i in ids)} == {f"imaging/{i}": 1 for i in ids}


def test_an_ehr_without_batch_gets_one_post_per_record(spool_stack: GateStack, fhir_proxy: FhirProxy) -> None:
    """The last test here: the publishers stay in one-POST-per-record mode once a Bundle met a 405."""
    stack = spool_stack.stack
    assert stack.ehr is not None
    before, singles = _last_id(spool_stack), stack.ehr.log().count('"POST /fhir/AuditEvent HTTP/1.1"')
    fhir_proxy.no_batch = True
    token = spool_stack.patient_token("alice")
    assert [_metadata(spool_stack, token).status_code for _ in range(3)] == [200] * 3
    ids = set(_spool(spool_stack, before))
    assert len(ids) == 3
    _wait(lambda: _published(spool_stack, ids))
    assert stack.ehr.log().count('"POST /fhir/AuditEvent HTTP/1.1"') - singles == 3
    counts = _record_keys(spool_stack.access_report("alice"))
    assert {key: counts[key] for key in (f"imaging/{i}" for i in ids)} == {f"imaging/{i}": 1 for i in ids}
