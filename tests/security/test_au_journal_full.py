"""The EHR refuses to disclose what it cannot audit (security.md AU-01; docs/audit.md "the disk
refuses the journal") against the real EHR process.

The EHR's audit journal directory is a small tmpfs mounted for the test (root only) and filled to
the last page before any request is audited, so the first append to a journal segment fails with
ENOSPC. A FHIR read, a search and a batch are then each 503 with ``Retry-After`` and an
OperationOutcome, never a 500, and none of them carries the data; once the disk has room again the
same requests are answered with it.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, issue, put, study, unique
from tests.ehr.smart.fixtures import own_ehr
from tests.security.test_ft_storage import _mount_tmpfs

from imagebridge.apps.seed import Seeded
from imagebridge.ehr.audit import JOURNAL_DIR


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, Path]]:
    """An EHR of its own whose audit journal directory is a 256 KiB tmpfs (the database beside it)."""
    data_dir = tmp_path_factory.mktemp("journal-full")
    journal = data_dir / "ehr" / JOURNAL_DIR
    _mount_tmpfs(journal, "256k")
    try:
        with own_ehr(data_dir) as stack:
            yield RunningStack("sqlite", stack, Seeded({}, {}, frozenset())), journal
    finally:
        subprocess.run(["umount", "-l", str(journal)], check=False)


def _fill(directory: Path) -> Path:
    """A file taking every free byte of ``directory``'s file system (down to its last page)."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (64 * 1024, 4096, 1):
            while _wrote(out, b"\0" * size):
                pass
    return filler


def _wrote(out: BinaryIO, data: bytes) -> bool:
    """False once the file system is full (ENOSPC); any other error is raised."""
    try:
        out.write(data)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return False
    return True


def _refused(answer: httpx.Response, *secrets: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "5"
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert "audit record could not be stored" in outcome["issue"][0]["diagnostics"]
    for secret in secrets:
        assert secret not in answer.text


def test_read_search_and_batch_are_503_while_the_journal_cannot_be_written(
    ehr: tuple[RunningStack, Path],
) -> None:
    running, journal = ehr
    patient = unique("journal-full")
    put(running, {"resourceType": "Patient", "id": patient, "name": [{"family": "Unjournaled"}]})
    stored = study(unique("journal-full-study"), patient)
    put(running, stored)
    uid = stored["identifier"][0]["value"]
    scope = "patient/Patient.rs patient/ImagingStudy.crs"
    token = issue(running, add_client(running, "public", scope), scope, patient=patient)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    base = running.fhir_base
    duplicate = {**stored, "id": None}
    batch: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "request": {
                    "method": "POST",
                    "url": "ImagingStudy",
                    "ifNoneExist": f"identifier=urn:dicom:uid|{uid}",
                },
                "resource": duplicate,
            }
        ],
    }

    def read() -> httpx.Response:
        return httpx.get(f"{base}/Patient/{patient}", headers=headers, timeout=30)

    def search() -> httpx.Response:
        return httpx.get(f"{base}/ImagingStudy", params={"patient": patient}, headers=headers, timeout=30)

    def batched() -> httpx.Response:
        return httpx.post(base, json=batch, headers=headers, timeout=30)

    filler = _fill(journal)
    _refused(read(), "Unjournaled")
    _refused(search(), stored["id"], uid)
    _refused(batched(), stored["id"])
    assert httpx.get(f"{running.stack.ehr_settings.origin}/healthz", timeout=30).status_code == 200

    filler.unlink()
    assert read().json()["name"] == [{"family": "Unjournaled"}]
    assert [e["resource"]["id"] for e in search().json()["entry"]] == [stored["id"]]
    answered = batched().json()["entry"][0]
    assert (answered["response"]["status"], answered["resource"]["id"]) == ("200 OK", stored["id"])
