"""STOW-RS indexes the instances of a request by batches (one transaction each), and still judges
every instance on its own (PS3.18 §10.5.3: per-instance FailedSOPSequence items)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import (
    ArchiveStack,
    failure_reasons,
    instance,
    part10,
    referenced_uids,
    sha256,
    started,
)
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.imaging.archive.ingest import DUPLICATE_SOP_CONFLICT, PROCESSING_FAILURE, STUDY_MISMATCH
from imagebridge.imaging.dicomweb.stow import BATCH


def test_conflicts_within_and_across_batches_fail_alone(archive_stack: ArchiveStack) -> None:
    """One request of more than two batches: an instance sent twice (same bytes, then other
    bytes), a Series UID of another study and a Study UID of another patient fail alone, wherever
    they fall; every other instance is stored."""
    study = generate_uid()
    series = generate_uid()
    good = [instance(study=study, series=series, number=i, seed=i) for i in range(2 * BATCH + 5)]
    files = [part10(ds) for ds in good]
    first = good[3]
    same_again = files[3]
    other_bytes = part10(instance(study=study, series=series, sop=str(first.SOPInstanceUID), seed=999))
    other_study = part10(instance(series=series, seed=1001))  # a Series UID of this study
    other_patient = part10(instance(study=study, patient_id="MRN-SOMEONE-ELSE", seed=1002))
    body = [*files[:BATCH], same_again, other_bytes, *files[BATCH : 2 * BATCH], other_study, other_patient]
    body += files[2 * BATCH :]

    answer = archive_stack.stow(body)

    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert failure_reasons(result) == [DUPLICATE_SOP_CONFLICT, STUDY_MISMATCH, STUDY_MISMATCH]
    stored = [str(ds.SOPInstanceUID) for ds in good]
    assert referenced_uids(result) == [*stored[:BATCH], stored[3], *stored[BATCH:]]
    assert sorted(sha256(p) for p in archive_stack.retrieve(study)) == sorted(map(sha256, files))


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveStack]:
    require_postgres()
    with temporary_database("stow_batches") as url:
        yield from started(tmp_path_factory.mktemp("stow-pg"), database_url=url)


def test_an_instance_the_database_refuses_fails_alone(on_postgres: ArchiveStack) -> None:
    """PostgreSQL refuses an Instance Number past its integer column, which fails the batch's
    transaction: the batch is indexed again instance by instance, and only that one fails."""
    study = generate_uid()
    good = [instance(study=study, number=i, seed=i) for i in range(3)]
    too_big = instance(study=study, seed=7)
    too_big.InstanceNumber = "99999999999"  # IS allows 12 characters; Integer holds 2**31 - 1
    answer = on_postgres.stow([part10(good[0]), part10(too_big), *map(part10, good[1:])])
    assert answer.status_code == 202, answer.text
    assert failure_reasons(answer.json()) == [PROCESSING_FAILURE]
    assert referenced_uids(answer.json()) == [str(ds.SOPInstanceUID) for ds in good]
    assert sorted(sha256(p) for p in on_postgres.retrieve(study)) == sorted(sha256(part10(ds)) for ds in good)
