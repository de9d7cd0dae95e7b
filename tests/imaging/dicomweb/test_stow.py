"""STOW-RS against the real imaging process (PS3.18 §10.5; security.md DI-04, DI-05, DI-10, DI-16)."""

from __future__ import annotations

from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import (
    ArchiveStack,
    instance,
    part10,
    referenced_uids,
    sha256,
)


def test_store_then_retrieve_byte_identical(archive_stack: ArchiveStack) -> None:
    study = generate_uid()
    files = [part10(instance(study=study, number=i, seed=i)) for i in range(3)]
    answer = archive_stack.stow(files)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/dicom+json")
    assert len(referenced_uids(answer.json())) == 3
    assert {sha256(p) for p in archive_stack.retrieve(study)} == {sha256(f) for f in files}
