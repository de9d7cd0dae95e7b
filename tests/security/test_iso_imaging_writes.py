"""Imaging isolation on the write side (security.md §3: ISO-07, ISO-08, ISO-09) against the
running pair, on a stack of its own with no studies: the demo patients Alice, Bob and Maya, the
demo modality (``system/ImagingStudy.c`` for every patient), and writers whose Group holds Alice
only or all three."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select as sql_select
from tests.gate_stack import GateStack, start_gate_stack
from tests.imaging.archive.archive_stack import (
    BOUNDARY,
    STOW_TYPE,
    add_backend,
    failure_reasons,
    instance,
    multipart,
    part10,
    referenced_uids,
    sha256,
)
from tests.imaging.upstream.fake_pacs import FakePacs

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import WADO_ACCEPT, BackendClient, backend_token, iter_multipart
from imagebridge.common import db, jose
from imagebridge.ehr.admin import Admin
from imagebridge.imaging.archive.ingest import CONFLICTS, NOT_AUTHORIZED, STUDY_MISMATCH
from imagebridge.imaging.tables import instances

ALICE, BOB, MAYA = demo_data.ALICE, demo_data.BOB, demo_data.MAYA
WRITER = "iso-writer-alice"


@pytest.fixture(scope="module")
def writes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateStack]:
    yield from start_gate_stack(tmp_path_factory, "iso-writes", with_studies=False)


def _stow(stack: GateStack, token: str, parts: list[bytes], study: str | None = None) -> httpx.Response:
    url = f"{stack.dicomweb_base}/studies" + (f"/{study}" if study else "")
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": STOW_TYPE,
        "Accept": "application/dicom+json",
    }
    with httpx.Client(timeout=120) as http:
        return http.post(url, content=multipart(parts), headers=headers)


def _modality(stack: GateStack) -> str:
    client = stack.seeded.clients["modality"]
    with httpx.Client(timeout=30) as http:
        return str(backend_token(stack.fhir_base, client.backend, client.scope, http)["access_token"])


def _retrieve(stack: GateStack, token: str, path: str) -> tuple[int, list[bytes]]:
    with (
        httpx.Client(timeout=60) as http,
        http.stream(
            "GET",
            f"{stack.dicomweb_base}{path}",
            headers={"Authorization": f"Bearer {token}", "Accept": WADO_ACCEPT},
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            return response.status_code, []
        return 200, list(iter_multipart(response))


def _published(stack: GateStack, token: str, path: str, timeout: float = 60) -> list[bytes]:
    """The parts of ``path`` once the study is published at the EHR and the token's grant has it."""
    deadline = time.monotonic() + timeout
    while (answer := _retrieve(stack, token, path))[0] != 200:
        assert time.monotonic() < deadline, f"{path} never became retrievable: {answer[0]}"
        time.sleep(0.2)
    return answer[1]


def test_iso07_a_study_uid_of_one_patient_never_takes_anothers_instances(writes: GateStack) -> None:
    """ISO-07 (orthanc-tests ``test_bitbucket_issue_131``): a Study UID stored for Alice refuses
    Bob's instances, in a new series or in hers (409, 0xC409); at study, series and instance level
    Alice's token gets only hers and Bob's token nothing."""
    modality = _modality(writes)
    study = generate_uid()
    hers = instance(study=study, patient_id=ALICE.mrn, seed=1)
    assert _stow(writes, modality, [part10(hers)]).status_code == 200
    his_new_series = instance(study=study, patient_id=BOB.mrn, seed=2)
    his_in_her_series = instance(study=study, series=str(hers.SeriesInstanceUID), patient_id=BOB.mrn, seed=3)
    for his in (his_new_series, his_in_her_series):
        refused = _stow(writes, modality, [part10(his)])
        assert refused.status_code == 409, refused.text
        assert failure_reasons(refused.json()) == [STUDY_MISMATCH]
    series = f"/studies/{study}/series/{hers.SeriesInstanceUID}"
    alice, bob = writes.patient_token(ALICE.fhir_id), writes.patient_token(BOB.fhir_id)
    for path in (f"/studies/{study}", series, f"{series}/instances/{hers.SOPInstanceUID}"):
        assert _published(writes, alice, path) == [part10(hers)], path
        assert _retrieve(writes, bob, path)[0] == 404, path
    assert _retrieve(writes, alice, f"/studies/{study}/series/{his_new_series.SeriesInstanceUID}")[0] == 404


def test_iso09_reusing_uids_under_another_patient_leaves_the_original_byte_identical(
    writes: GateStack,
) -> None:
    """ISO-09 (decision 5; dcm4chee ``dcmOverwritePolicy`` NEVER): Bob's bytes under the SOP
    Instance UID of Alice's instance (same study, or another study), or as a new instance of her
    study, are refused with a Failure Reason; her instance's SHA-256 is unchanged."""
    modality = _modality(writes)
    hers = instance(patient_id=ALICE.mrn, seed=4)
    assert _stow(writes, modality, [part10(hers)]).status_code == 200
    alice = writes.patient_token(ALICE.fhir_id)
    path = f"/studies/{hers.StudyInstanceUID}"
    before = [sha256(p) for p in _published(writes, alice, path)]
    assert before == [sha256(part10(hers))]
    study, sop = str(hers.StudyInstanceUID), str(hers.SOPInstanceUID)
    attempts = [
        instance(study=study, series=str(hers.SeriesInstanceUID), sop=sop, patient_id=BOB.mrn, seed=5),
        instance(sop=sop, patient_id=BOB.mrn, seed=6),
        instance(study=study, patient_id=BOB.mrn, seed=7),
    ]
    for attempt in attempts:
        answer = _stow(writes, modality, [part10(attempt)])
        assert answer.status_code == 409, answer.text
        assert set(failure_reasons(answer.json())) <= CONFLICTS
        assert failure_reasons(answer.json())
    assert [sha256(p) for p in _retrieve(writes, alice, path)[1]] == before
    other_study = f"/studies/{attempts[1].StudyInstanceUID}"
    assert _retrieve(writes, writes.patient_token(BOB.fhir_id), other_study)[0] == 404


def _client_token(
    stack: GateStack, client_id: str, scope: str, group: str, members: tuple[str, ...] = (ALICE.fhir_id,)
) -> str:
    """A backend token of a client registered here (once) with ``scope`` and ``group`` (holding
    ``members``)."""
    key = jose.load_or_create_private_jwk(stack.stack.data_dir / f"{client_id}.json", "ES384")

    async def register() -> None:
        admin = Admin(stack.stack.ehr_settings)
        try:
            member = [{"entity": {"reference": f"Patient/{p}"}} for p in members]
            await admin.put_resource(
                {"resourceType": "Group", "id": group, "type": "person", "actual": True, "member": member}
            )
            await add_backend(admin, client_id, scope, key, f"Group/{group}")
        finally:
            await admin.close()

    asyncio.run(register())
    with httpx.Client(timeout=30) as http:
        return str(backend_token(stack.fhir_base, BackendClient(client_id, key), scope, http)["access_token"])


def _reader(stack: GateStack) -> str:
    """A backend reader whose Group holds the three demo patients."""
    members = (ALICE.fhir_id, BOB.fhir_id, MAYA.fhir_id)
    return _client_token(stack, "iso-reader-all", "system/ImagingStudy.rs", "iso-readers", members)


def _qido_studies(stack: GateStack, token: str, study: str) -> list[object]:
    with httpx.Client(timeout=60) as http:
        response = http.get(
            f"{stack.dicomweb_base}/studies",
            params={"StudyInstanceUID": study},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        )
    assert response.status_code == 200, response.text
    return list(response.json())


def test_iso08_a_writer_for_one_patient_cannot_store_for_another(writes: GateStack) -> None:
    """ISO-08 (test_authorization.py ``test_uploader_a``): a writer whose Group holds Alice only
    stores for Alice, but an instance with Bob's PatientID, new or posted to Bob's study, is
    refused (409, 0x0124 Not Authorized) and nothing of it is stored: a reader of both patients' studies
    (a backend client whose Group holds both) finds it neither before nor after a later study of Bob's is
    published."""
    writer = _client_token(writes, WRITER, "system/ImagingStudy.crs", "iso-writer-alice")
    reader = _reader(writes)
    modality = _modality(writes)
    hers = instance(patient_id=ALICE.mrn, seed=8)
    assert _stow(writes, writer, [part10(hers)]).status_code == 200
    bobs = instance(patient_id=BOB.mrn, seed=9)
    assert _stow(writes, modality, [part10(bobs)]).status_code == 200
    attempts = [
        (instance(patient_id=BOB.mrn, seed=10), None),
        (instance(study=str(bobs.StudyInstanceUID), patient_id=BOB.mrn, seed=11), str(bobs.StudyInstanceUID)),
        (instance(study=str(bobs.StudyInstanceUID), patient_id=BOB.mrn, seed=12), None),
    ]
    for attempt, url_study in attempts:
        answer = _stow(writes, writer, [part10(attempt)], url_study)
        assert answer.status_code == 409, (url_study, answer.status_code, answer.text)
        assert "00081199" not in answer.json()
        assert failure_reasons(answer.json()) == [NOT_AUTHORIZED]
    later = instance(patient_id=BOB.mrn, seed=13)
    assert _stow(writes, modality, [part10(later)]).status_code == 200
    _published(writes, reader, f"/studies/{later.StudyInstanceUID}")
    assert _published(writes, reader, f"/studies/{bobs.StudyInstanceUID}") == [part10(bobs)]
    assert _qido_studies(writes, reader, str(attempts[0][0].StudyInstanceUID)) == []


def test_iso08_a_patient_context_writer_stores_for_its_patient_only(writes: GateStack) -> None:
    """ISO-08 with a patient-context token (``patient/ImagingStudy.crs``, Alice in context): the
    grant lists Alice's MRN; Bob's PatientID is refused (409, 0x0124) and never published."""
    writer = writes.patient_token(ALICE.fhir_id, "launch/patient patient/ImagingStudy.crs")
    reader = _reader(writes)
    hers = instance(patient_id=ALICE.mrn, seed=14)
    assert _stow(writes, writer, [part10(hers)]).status_code == 200
    his = instance(patient_id=BOB.mrn, seed=15)
    refused = _stow(writes, writer, [part10(his)])
    assert refused.status_code == 409, refused.text
    assert failure_reasons(refused.json()) == [NOT_AUTHORIZED]
    assert _published(writes, reader, f"/studies/{hers.StudyInstanceUID}") == [part10(hers)]
    assert _qido_studies(writes, reader, str(his.StudyInstanceUID)) == []


def test_iso08_a_mixed_request_stores_the_permitted_instances_only(writes: GateStack) -> None:
    """ISO-08, one request with Alice's and Bob's instances from the writer whose Group holds
    Alice: hers is stored (202), his fails with 0x0124 and is stored nowhere."""
    writer = _client_token(writes, WRITER, "system/ImagingStudy.crs", "iso-writer-alice")
    reader = _reader(writes)
    hers = instance(patient_id=ALICE.mrn, seed=16)
    his = instance(patient_id=BOB.mrn, seed=17)
    answer = _stow(writes, writer, [part10(hers), part10(his)])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert failure_reasons(body) == [NOT_AUTHORIZED]
    assert body["00081198"]["Value"][0]["00081155"]["Value"] == [str(his.SOPInstanceUID)]
    stored = [item["00081155"]["Value"][0] for item in body["00081199"]["Value"]]
    assert stored == [str(hers.SOPInstanceUID)]
    assert _published(writes, reader, f"/studies/{hers.StudyInstanceUID}") == [part10(hers)]
    assert _qido_studies(writes, reader, str(his.StudyInstanceUID)) == []


def test_iso08_a_write_the_ehr_cannot_decide_fails_the_request(writes: GateStack) -> None:
    """Fail closed (invariant 4): the writer's question about Bob's PatientID cannot reach the
    EHR (its introspection endpoint refuses connections), so the request is 503 + Retry-After and
    Bob's instance is stored nowhere."""
    writer = _client_token(writes, WRITER, "system/ImagingStudy.crs", "iso-writer-alice")
    assert _stow(writes, writer, [part10(instance(patient_id=ALICE.mrn, seed=18))]).status_code == 200
    his = instance(patient_id=BOB.mrn, seed=19)
    writes.proxy.stop()
    try:
        answer = _stow(writes, writer, [part10(his)])
    finally:
        writes.proxy.start()
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["retry-after"]) > 0
    assert _qido_studies(writes, _reader(writes), str(his.StudyInstanceUID)) == []


class _Upload:
    """A STOW-RS request sent piece by piece over its own connection (the ``Content-Length`` of
    the whole body announced), so a test sees whether the answer comes before the body ends."""

    def __init__(self, stack: GateStack, token: str, body: bytes) -> None:
        url = httpx.URL(f"{stack.dicomweb_base}/studies")
        assert url.port is not None
        self.body = body
        self.sent = 0
        self.sock = socket.create_connection((url.host, url.port), timeout=120)
        head = (
            f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {STOW_TYPE}\r\n"
            f"Accept: application/dicom+json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode())

    def send_to(self, end: int) -> None:
        self.sock.sendall(self.body[self.sent : end])
        self.sent = end

    def answered(self, wait: float) -> bool:
        """Whether the first bytes of the answer have arrived (waiting at most ``wait`` s)."""
        return bool(select.select([self.sock], [], [], wait)[0])

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """Status, header fields (names lower-cased) and body of the answer."""
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, "the connection closed without an answer"
            data += chunk
        head, _, content = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        while len(content) < int(headers["content-length"]):
            chunk = self.sock.recv(65536)
            assert chunk, "the connection closed within the answer"
            content += chunk
        return int(status_line.split()[1]), headers, content


def _indexed(stack: GateStack, sop_uids: list[str]) -> set[str]:
    """Which of ``sop_uids`` the imaging system's index holds (read in its database)."""

    async def run() -> set[str]:
        engine = db.create_engine(stack.stack.imaging_settings.resolved_database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                query = sql_select(instances.c.sop_uid).where(instances.c.sop_uid.in_(sop_uids))
                return {str(row.sop_uid) for row in await conn.execute(query)}
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _wait_for_write_answers(stack: GateStack, patient_ids: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not patient_ids <= set(stack.proxy.write_answers):
        assert time.monotonic() < deadline, f"the EHR was never asked about {patient_ids}"
        time.sleep(0.05)


@pytest.mark.parametrize("failure", ["stopped", "status_500"])
def test_iso08_the_ehr_failing_within_a_request_answers_503_at_once(writes: GateStack, failure: str) -> None:
    """Invariants 4 and 5 within one multi-instance request of a writer the EHR decides per
    PatientID (grant ``write`` mode ``ask``, a Group holding Alice, Bob and Maya): Alice's and
    Maya's instances are decided, then the EHR stops (connection refused) or answers 500, and
    Bob's PatientID cannot be decided. The request answers 503 + Retry-After before the rest of
    the body is even sent (it is not spooled), acknowledges nothing, and leaves none of Bob's
    instances anywhere; the instances decided before stay stored (durable and indexed), so the
    client's retry once the EHR is back acknowledges every instance, theirs as the same bytes."""
    members = (ALICE.fhir_id, BOB.fhir_id, MAYA.fhir_id)
    writer = _client_token(writes, "iso-writer-all", "system/ImagingStudy.crs", "iso-writers-all", members)
    bob_study = generate_uid()
    datasets = [
        instance(patient_id=ALICE.mrn, seed=40),
        instance(patient_id=MAYA.mrn, seed=41),
        *(instance(study=bob_study, patient_id=BOB.mrn, number=n, seed=42 + n) for n in range(1, 22)),
    ]
    parts = [part10(ds) for ds in datasets]
    sops = [str(ds.SOPInstanceUID) for ds in datasets]
    body = multipart(parts)
    # where each part's header block begins: a part is complete once the next one's delimiter is in
    starts = [m.end() for m in re.finditer(re.escape(f"--{BOUNDARY}\r\n".encode()), body)]
    assert len(starts) == len(parts)
    writes.proxy.write_answers.clear()
    upload = _Upload(writes, writer, body)
    try:
        upload.send_to(starts[2])  # Alice's and Maya's instances
        _wait_for_write_answers(writes, {ALICE.mrn, MAYA.mrn})
        if failure == "stopped":
            writes.proxy.stop()
        else:
            writes.proxy.mode = failure
        upload.send_to(starts[3])  # Bob's first instance: the EHR cannot decide it
        for start in starts[4:]:
            if upload.answered(1.0):
                break
            upload.send_to(start)
        else:
            if not upload.answered(1.0):
                upload.send_to(len(body))  # the rest, and the close delimiter: see the assertion
        status, headers, content = upload.answer()
    finally:
        upload.sock.close()
        if failure == "stopped":
            writes.proxy.start()
        writes.proxy.mode = "forward"
    assert status == 503, content
    assert int(headers["retry-after"]) > 0
    assert orjson.loads(content)["error"] == "temporarily_unavailable"  # no Store Instances Response
    assert upload.sent < len(body), "the 503 waited for the rest of the body"
    assert _indexed(writes, sops) == set(sops[:2])
    assert not any((writes.stack.imaging_settings.data_dir / "spool").iterdir())
    retried = _stow(writes, writer, parts)
    assert retried.status_code == 200, retried.text
    assert referenced_uids(retried.json()) == sops
    reader = _reader(writes)
    assert _published(writes, reader, f"/studies/{datasets[0].StudyInstanceUID}") == parts[:1]
    assert _published(writes, reader, f"/studies/{datasets[1].StudyInstanceUID}") == parts[1:2]
    assert sorted(map(sha256, _published(writes, reader, f"/studies/{bob_study}"))) == sorted(
        map(sha256, parts[2:])
    )


@pytest.mark.parametrize(
    ("writer", "mode"),
    [
        ("imaging source", "no_write"),
        ("imaging source", "no_grant"),
        ("patient context", "no_write"),
        ("ask", "no_write_decision"),
    ],
)
def test_iso08_an_answer_without_the_write_member_writes_for_no_one(
    writes: GateStack, writer: str, mode: str
) -> None:
    """Missing context is never system-level access (docs/gate.md "Writing": absent, stores
    nothing): the EHR's answer for a writer with a write scope lacks the imaging grant's ``write``
    member (``no_write``), the whole grant as a plain SMART EHR's would (``no_grant``), or only
    the answer to the per-PatientID question does (``no_write_decision``). Even the demo modality,
    an imaging source, then stores neither Alice's nor Bob's instance (409, 0x0124 each)."""
    token = (
        _modality(writes)
        if writer == "imaging source"
        else writes.patient_token(ALICE.fhir_id, "launch/patient patient/ImagingStudy.crs")
        if writer == "patient context"
        else _client_token(writes, WRITER, "system/ImagingStudy.crs", "iso-writer-alice")
    )
    datasets = [instance(patient_id=ALICE.mrn, seed=70), instance(patient_id=BOB.mrn, seed=71)]
    writes.proxy.mode = mode
    try:
        answer = _stow(writes, token, [part10(ds) for ds in datasets])
    finally:
        writes.proxy.mode = "forward"
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    assert "00081199" not in answer.json()
    assert _indexed(writes, [str(ds.SOPInstanceUID) for ds in datasets]) == set()


@pytest.fixture(scope="module")
def proxy_writes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GateStack, FakePacs]]:
    """A gate stack in proxy mode in front of a fake PACS that answers every request with 500."""
    with FakePacs() as pacs:
        pacs.mode = "status_500"
        for stack in start_gate_stack(
            tmp_path_factory,
            "iso-proxy-writes",
            with_studies=False,
            IMAGEBRIDGE_IMAGING_UPSTREAM_URL=pacs.base,
            IMAGEBRIDGE_IMAGING_UPSTREAM_QUIRKS="",
            IMAGEBRIDGE_IMAGING_UPSTREAM_SYNC_INTERVAL="3600",
        ):
            yield stack, pacs


@pytest.mark.parametrize("mode", ["forward", "no_write", "no_grant"])
def test_iso08_in_proxy_mode_an_answer_without_the_write_member_stores_nothing(
    proxy_writes: tuple[GateStack, FakePacs], mode: str
) -> None:
    """Proxy mode streams STOW-RS bodies to the PACS unjudged, so only an imaging source may store
    (grant ``write`` mode ``any``): the demo modality's request reaches the PACS (here answering
    500, hence 502), but not when the EHR's answer lacks the ``write`` member or the whole imaging
    grant (403, the PACS never asked)."""
    stack, pacs = proxy_writes
    token = _modality(stack)
    stack.proxy.mode = mode
    pacs.requests.clear()
    try:
        answer = _stow(stack, token, [part10(instance(patient_id=ALICE.mrn, seed=80))])
    finally:
        stack.proxy.mode = "forward"
    posts = [r for r in pacs.requests if r.startswith("POST ")]
    if mode == "forward":
        assert answer.status_code == 502, answer.text
        assert posts == ["POST /dicom-web/studies"]
    else:
        assert answer.status_code == 403, answer.text
        assert "imaging source" in answer.text
        assert posts == []
