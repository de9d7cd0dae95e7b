"""Imaging isolation on the write side (security.md §3: ISO-07, ISO-08, ISO-09) against the
running pair, on a stack of its own with no studies: the demo patients Alice and Bob, the demo
modality (``system/ImagingStudy.c`` for every patient), and a writer whose Group holds Alice only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.gate_stack import GateStack, start_gate_stack
from tests.imaging.archive.archive_stack import (
    STOW_TYPE,
    add_backend,
    failure_reasons,
    instance,
    multipart,
    part10,
    sha256,
)

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import WADO_ACCEPT, BackendClient, backend_token, iter_multipart
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.imaging.archive.ingest import CONFLICTS, NOT_AUTHORIZED, STUDY_MISMATCH

ALICE, BOB = demo_data.ALICE, demo_data.BOB
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
    """A backend reader whose Group holds both patients."""
    members = (ALICE.fhir_id, BOB.fhir_id)
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
