"""An independent client against our imaging system: dicomweb-client (Python, ``requests``).

Every DICOMweb method dicomweb-client has is exercised against the running server with a
bearer token in its session: search at each level with filters, retrieve study / series /
instance, metadata at each level, bulk data, frames, rendered, and store. What comes back is
what was stored; the stored instance comes back byte-identical with ``transfer-syntax=*``.
"""

from __future__ import annotations

import asyncio
import time
from io import BytesIO
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from tests.conftest import TEST_SCALE, RunningStack
from tests.imaging.tokens import modality_token, patient_token, quality_review_token

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import iter_multipart
from imagebridge.apps.synthetic import PatientSpec, StudySpec, dataset_bytes, generate_study
from imagebridge.ehr.admin import Admin

SPECS = {spec.accession_number: spec for spec, _ in demo_data.studies(TEST_SCALE)}
CLIENT_PATIENT = PatientSpec(patient_id="MRN-CLIENT-1", name="Client^Casey", birth_date="19900101", sex="O")


def dicomweb_client(running: RunningStack, token: str) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=running.dicomweb_base, session=session)


@pytest.fixture(scope="module")
def reviewer(running: RunningStack) -> DICOMwebClient:
    """Sees Alice's studies (the quality-review Group)."""
    return dicomweb_client(running, quality_review_token(running))


@pytest.fixture(scope="module")
def cardiac(running: RunningStack) -> list[Dataset]:
    """Alice's cardiac MR as generated (and stored by the seed)."""
    return list(generate_study(SPECS["ACC-1004"]))


def uid(result: dict[str, Any], tag: str) -> Any:
    return result[tag]["Value"][0]


def test_search_at_each_level(running: RunningStack, reviewer: DICOMwebClient) -> None:
    alice = {running.seeded.study_uids[a] for a in SPECS if a.startswith("ACC-1")}
    assert {uid(s, "0020000D") for s in reviewer.search_for_studies()} == alice
    found = reviewer.search_for_studies(search_filters={"PatientName": "Anders^A*", "StudyDate": "20240501-"})
    assert {uid(s, "00080050") for s in found} == {"ACC-1002", "ACC-1004"}
    fuzzy = reviewer.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "alice"})
    assert len(fuzzy) == len(alice)
    paged = reviewer.search_for_studies(limit=2, offset=1, fields=["StudyDescription"])
    assert len(paged) == 2
    assert all("00081030" in s for s in paged)
    assert len(reviewer.search_for_studies(limit=1, get_remaining=True)) == len(alice)
    assert reviewer.search_for_studies(search_filters={"PatientID": "MRN-1002"}) == []
    study = running.seeded.study_uids["ACC-1002"]
    series = reviewer.search_for_series(study, search_filters={"Modality": "MR"})
    assert len(series) == SPECS["ACC-1002"].series_count
    assert {uid(s, "0020000D") for s in reviewer.search_for_series(search_filters={"Modality": "CT"})} == {
        running.seeded.study_uids["ACC-1001"]
    }
    series_uid = uid(series[0], "0020000E")
    instances = reviewer.search_for_instances(study, series_uid)
    assert len(instances) == SPECS["ACC-1002"].instances_per_series
    assert len(reviewer.search_for_instances(study)) == len(series) * len(instances)
    assert len(reviewer.search_for_instances(search_filters={"InstanceNumber": 1, "Modality": "MR"})) >= 3


def test_retrieve_study_series_instance(reviewer: DICOMwebClient, cardiac: list[Dataset]) -> None:
    first = cardiac[0]
    study = reviewer.retrieve_study(first.StudyInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in study) == sorted(ds.SOPInstanceUID for ds in cardiac)
    by_uid = {ds.SOPInstanceUID: ds for ds in cardiac}
    for ds in study:
        assert ds.PixelData == by_uid[ds.SOPInstanceUID].PixelData
        assert ds.PatientName == by_uid[ds.SOPInstanceUID].PatientName
    series = reviewer.retrieve_series(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert len(series) == sum(ds.SeriesInstanceUID == first.SeriesInstanceUID for ds in cardiac)
    instance = reviewer.retrieve_instance(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert instance.SOPInstanceUID == first.SOPInstanceUID
    assert instance.PixelData == first.PixelData


def test_metadata_and_bulkdata(reviewer: DICOMwebClient, cardiac: list[Dataset]) -> None:
    first = cardiac[0]
    study = reviewer.retrieve_study_metadata(first.StudyInstanceUID)
    assert len(study) == len(cardiac)
    series = reviewer.retrieve_series_metadata(first.StudyInstanceUID, first.SeriesInstanceUID)
    assert {uid(m, "00080018") for m in series} <= {ds.SOPInstanceUID for ds in cardiac}
    instance = reviewer.retrieve_instance_metadata(
        first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID
    )
    assert uid(instance, "00080018") == first.SOPInstanceUID
    header = Dataset.from_json({tag: value for tag, value in instance.items() if tag != "7FE00010"})
    assert header.PatientID == first.PatientID
    pixel_uri = instance["7FE00010"]["BulkDataURI"]
    assert reviewer.retrieve_bulkdata(pixel_uri) == [first.PixelData]
    assert reviewer.retrieve_bulkdata(pixel_uri, byte_range=(0, 99)) == [first.PixelData[:100]]


def test_frames_and_rendered(reviewer: DICOMwebClient, cardiac: list[Dataset]) -> None:
    first = cardiac[0]
    uids = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID)
    frames = reviewer.retrieve_instance_frames(*uids, frame_numbers=[1])
    assert frames == [first.PixelData]
    explicit = reviewer.retrieve_instance_frames(
        *uids, frame_numbers=[1], media_types=(("application/octet-stream", "*"),)
    )
    assert explicit == [first.PixelData]
    jpeg = reviewer.retrieve_instance_rendered(*uids, media_types=("image/jpeg",))
    assert jpeg[:2] == b"\xff\xd8"
    png = reviewer.retrieve_instance_rendered(*uids, media_types=("image/png",))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rendered_frame = reviewer.retrieve_instance_frames_rendered(
        *uids, frame_numbers=[1], media_types=("image/png",)
    )
    assert rendered_frame[:8] == b"\x89PNG\r\n\x1a\n"


def test_foreign_study_is_not_found(running: RunningStack, reviewer: DICOMwebClient) -> None:
    bob = running.seeded.study_uids["ACC-2002"]
    with pytest.raises(requests.HTTPError) as caught:
        reviewer.retrieve_study_metadata(bob)
    assert caught.value.response.status_code == 404


def _add_patient(running: RunningStack) -> None:
    async def put() -> None:
        admin = Admin(running.stack.ehr_settings)
        try:
            await admin.put_resource(
                {
                    "resourceType": "Patient",
                    "id": "client-casey",
                    "identifier": [{"system": demo_data.MRN_SYSTEM, "value": CLIENT_PATIENT.patient_id}],
                    "name": [{"family": "Client", "given": ["Casey"]}],
                    "birthDate": "1990-01-01",
                }
            )
        finally:
            await admin.close()

    asyncio.run(put())


@pytest.fixture(scope="module")
def stored(running: RunningStack) -> tuple[list[Dataset], list[bytes]]:
    """A new study stored with dicomweb-client, and the request bodies it sent."""
    _add_patient(running)
    spec = StudySpec(
        CLIENT_PATIENT,
        "DX",
        "Stored by dicomweb-client",
        "HAND",
        "20250102",
        accession_number="ACC-9001",
        instances_per_series=3,
        rows=32,
        columns=32,
        seed=9001,
    )
    # as a modality holds them: read from PS3.10 files (with preamble and File Meta Information)
    datasets = [dcmread(BytesIO(dataset_bytes(ds))) for ds in generate_study(spec)]
    modality = dicomweb_client(running, modality_token(running))
    sent: list[bytes] = []
    modality._session.hooks["response"].append(lambda r, *_, **__: sent.append(r.request.body))
    response = modality.store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response
    return datasets, sent


def _casey(running: RunningStack, study_uid: str) -> DICOMwebClient:
    """Casey's own token, once the study has been published to the EHR."""
    deadline = time.monotonic() + 60
    while True:
        client = dicomweb_client(running, patient_token(running, "client-casey", "Patient/client-casey"))
        if client.search_for_studies(search_filters={"StudyInstanceUID": study_uid}):
            return client
        assert time.monotonic() < deadline, "the stored study was never published"
        time.sleep(0.3)


def test_store_then_retrieve_byte_identical(
    running: RunningStack, stored: tuple[list[Dataset], list[bytes]]
) -> None:
    datasets, sent = stored
    study_uid = datasets[0].StudyInstanceUID
    casey = _casey(running, study_uid)
    retrieved = casey.retrieve_study(study_uid)
    assert {ds.SOPInstanceUID for ds in retrieved} == {ds.SOPInstanceUID for ds in datasets}
    by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
    assert all(ds.PixelData == by_uid[ds.SOPInstanceUID].PixelData for ds in retrieved)
    token = casey._session.headers["Authorization"]
    with httpx.stream(
        "GET",
        f"{running.dicomweb_base}/studies/{study_uid}",
        headers={
            "Authorization": token,
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
        },
    ) as response:
        parts = list(iter_multipart(response))
    assert len(parts) == len(datasets)
    body = b"".join(sent)
    assert all(part in body for part in parts)  # exactly the bytes dicomweb-client sent
    studies = casey.search_for_studies()
    assert [uid(s, "0020000D") for s in studies] == [study_uid]
    assert uid(studies[0], "00201208") == len(datasets)
