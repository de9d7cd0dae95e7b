"""STOW-RS against the real imaging process (PS3.18 §10.5; security.md DI-04, DI-05, DI-10, DI-16)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive import hostile
from tests.imaging.archive.archive_stack import (
    BOUNDARY,
    STOW_TYPE,
    ArchiveStack,
    failure_reasons,
    instance,
    multipart,
    part10,
    referenced_uids,
    sha256,
    started,
)

from imagebridge.imaging.archive.ingest import (
    CANNOT_UNDERSTAND,
    DATASET_SOP_CLASS_MISMATCH,
    DUPLICATE_SOP_CONFLICT,
    OUT_OF_RESOURCES,
    STUDY_MISMATCH,
    TRANSFER_SYNTAX_NOT_SUPPORTED,
)


def test_store_then_retrieve_byte_identical(archive_stack: ArchiveStack) -> None:
    study = generate_uid()
    files = [part10(instance(study=study, number=i, seed=i)) for i in range(3)]
    answer = archive_stack.stow(files)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert len(referenced_uids(answer.json())) == 3
    assert {sha256(p) for p in archive_stack.retrieve(study)} == {sha256(f) for f in files}


def _spool_is_empty(stack: ArchiveStack) -> bool:
    return not any((stack.stack.imaging_settings.data_dir / "spool").iterdir())


def test_bad_instances_fail_alone_and_the_rest_is_stored(archive_stack: ArchiveStack) -> None:
    """DI-01..DI-08: every bad part gets its own failure reason; the good ones are stored (202)."""
    study = generate_uid()
    good = [part10(instance(study=study, number=i, seed=i)) for i in range(2)]
    no_patient = instance(study=study)
    del no_patient.PatientID
    cases = [
        (b"this is not DICOM", CANNOT_UNDERSTAND),
        (part10(instance(study=study))[:500], CANNOT_UNDERSTAND),
        (hostile.huge_length(), CANNOT_UNDERSTAND),
        (hostile.huge_length(in_meta=True), CANNOT_UNDERSTAND),
        (hostile.deep_sequence(300), CANNOT_UNDERSTAND),
        (hostile.deep_sequence(10000), CANNOT_UNDERSTAND),
        (hostile.with_uid("1.02.3"), CANNOT_UNDERSTAND),
        (hostile.with_uid("../../etc/passwd"), CANNOT_UNDERSTAND),
        (hostile.transfer_syntax("1.2.3.4.5.6"), TRANSFER_SYNTAX_NOT_SUPPORTED),
        (hostile.deflate_bomb(), CANNOT_UNDERSTAND),
        (part10(no_patient), CANNOT_UNDERSTAND),
        (hostile.mismatched_meta(), DATASET_SOP_CLASS_MISMATCH),
        (hostile.wrong_length(), CANNOT_UNDERSTAND),
    ]
    answer = archive_stack.stow([good[0], *(data for data, _ in cases), good[1]])
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert failure_reasons(body) == [reason for _, reason in cases]
    assert len(referenced_uids(body)) == 2
    assert {sha256(p) for p in archive_stack.retrieve(study)} == {sha256(g) for g in good}
    assert _spool_is_empty(archive_stack)


def test_same_instance_twice_is_idempotent(archive_stack: ArchiveStack) -> None:
    data = part10(ds := instance())
    assert archive_stack.stow([data]).status_code == 200
    again = archive_stack.stow([data, data])
    assert again.status_code == 200, again.text
    assert referenced_uids(again.json()) == [str(ds.SOPInstanceUID)] * 2
    assert [sha256(p) for p in archive_stack.retrieve(str(ds.StudyInstanceUID))] == [sha256(data)]


def test_same_uid_other_bytes_is_a_conflict(archive_stack: ArchiveStack) -> None:
    first = instance(seed=1)
    other = instance(seed=2, sop=str(first.SOPInstanceUID), study=str(first.StudyInstanceUID))
    assert archive_stack.stow([part10(first)]).status_code == 200
    answer = archive_stack.stow([part10(other)])
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [DUPLICATE_SOP_CONFLICT]
    assert [sha256(p) for p in archive_stack.retrieve(str(first.StudyInstanceUID))] == [sha256(part10(first))]


def test_study_in_url_must_match(archive_stack: ArchiveStack) -> None:
    """DI-16: POST /studies/{X} with an instance of another study → 409 (PS3.18 Table 10.5.3-1)."""
    url_study = generate_uid()
    elsewhere = part10(instance())
    answer = archive_stack.stow([elsewhere], study=url_study)
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [STUDY_MISMATCH]
    assert answer.json()["00081190"]["Value"][0].endswith(f"/studies/{url_study}")
    mixed = archive_stack.stow([part10(instance(study=url_study)), elsewhere], study=url_study)
    assert mixed.status_code == 202, mixed.text


def test_study_of_another_patient_is_refused(archive_stack: ArchiveStack) -> None:
    study = generate_uid()
    assert archive_stack.stow([part10(instance(study=study))]).status_code == 200
    answer = archive_stack.stow([part10(instance(study=study, patient_id="MRN-SOMEONE-ELSE"))])
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [STUDY_MISMATCH]


def test_preamble_is_stored_as_zeros(archive_stack: ArchiveStack) -> None:
    """DI-10: a PE header in the preamble never reaches the archive; the rest is byte-identical."""
    sent, clean = hostile.malicious_preamble()
    answer = archive_stack.stow([sent])
    assert answer.status_code == 200, answer.text
    study = pydicom.dcmread(io.BytesIO(clean)).StudyInstanceUID
    assert archive_stack.retrieve(str(study)) == [clean]


def test_request_level_errors(archive_stack: ArchiveStack) -> None:
    """DI-13, DI-14, DI-15: 415 for other media types, 400 for a body without the boundary,
    413 for a declared length over the limit (before any byte is read)."""
    url = f"{archive_stack.base}/studies"
    data = multipart([part10(instance())])
    with httpx.Client(timeout=30) as http:
        wrong_type = http.post(
            url, content=data, headers=archive_stack.headers(**{"Content-Type": "application/json"})
        )
        no_boundary = http.post(
            url,
            content=data.replace(BOUNDARY.encode(), b"something-else"),
            headers=archive_stack.headers(**{"Content-Type": STOW_TYPE}),
        )
    assert wrong_type.status_code == 415
    assert no_boundary.status_code == 400
    too_large = hostile.lying_content_length(
        url, archive_stack.headers(**{"Content-Type": STOW_TYPE}), 10 * 1024**3
    )
    assert too_large == 413
    assert _spool_is_empty(archive_stack)


def test_client_dropping_mid_upload_leaves_no_spool_file(archive_stack: ArchiveStack) -> None:
    """FT-11: the partial upload is discarded and the spool cleaned; the next request is served."""
    headers = archive_stack.headers(**{"Content-Type": STOW_TYPE})
    body = multipart([part10(instance(rows=512, columns=512))])
    hostile.drop_mid_body(f"{archive_stack.base}/studies", headers, body)
    deadline = time.monotonic() + 30
    while not _spool_is_empty(archive_stack):
        assert time.monotonic() < deadline, "the spool file of a dropped upload was never removed"
        time.sleep(0.1)
    assert archive_stack.stow([part10(instance())]).status_code == 200


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveStack]:
    """A stack with small size limits and the "replace" overwrite policy."""
    env = {
        "IMAGEBRIDGE_IMAGING_MAX_REQUEST_BYTES": str(400 * 1024),
        "IMAGEBRIDGE_IMAGING_MAX_INSTANCE_BYTES": str(100 * 1024),
        "IMAGEBRIDGE_IMAGING_STOW_OVERWRITE": "replace",
    }
    yield from started(tmp_path_factory.mktemp("limited"), extra_env=env)


def test_size_limits(limited: ArchiveStack) -> None:
    small = part10(instance(rows=64, columns=64))  # ~8 KB
    big = part10(instance(rows=256, columns=256))  # ~128 KB: over the per-instance limit
    assert limited.stow([big]).status_code == 413
    cut = limited.stow([small, big])  # the rest of the body is not read
    assert cut.status_code == 202, cut.text
    assert failure_reasons(cut.json()) == [OUT_OF_RESOURCES]

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off once past the request limit
        yield from (multipart([small] * 60)[i : i + 4096] for i in range(0, 60 * len(small), 4096))

    with httpx.Client(timeout=30) as http:
        answer = http.post(
            f"{limited.base}/studies",
            content=chunked(),
            headers=limited.headers(**{"Content-Type": STOW_TYPE}),
        )
    assert answer.status_code == 202, answer.text  # the first instances fit, the body was cut
    assert failure_reasons(answer.json()) == [OUT_OF_RESOURCES]
    assert _spool_is_empty(limited)


def test_replace_policy_overwrites(limited: ArchiveStack) -> None:
    first = instance(seed=1)
    second = instance(seed=2, sop=str(first.SOPInstanceUID), study=str(first.StudyInstanceUID))
    assert limited.stow([part10(first)]).status_code == 200
    assert limited.stow([part10(second)]).status_code == 200
    assert limited.retrieve(str(first.StudyInstanceUID)) == [part10(second)]
