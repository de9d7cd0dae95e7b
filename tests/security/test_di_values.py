"""Hostile values inside otherwise valid instances (security.md §4: DI-06, DI-11, DI-12), against
the real imaging process: UIDs shaped like paths or shell commands touch nothing outside the
storage root and run nothing; markup in DICOM values is only ever served as DICOM JSON with
``nosniff``; broken character sets are stored or refused, never a 5xx, and searches keep working.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import psutil
import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive import hostile
from tests.imaging.archive.archive_stack import ArchiveStack, failure_reasons, instance, part10
from tests.imaging.archive.hostile import element

JSON = "application/dicom+json"


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_di06_path_and_shell_shaped_uids_touch_nothing_outside_the_store(archive_stack: ArchiveStack) -> None:
    canary = Path("/tmp") / f"di06-{uuid.uuid4().hex}"
    values = [
        f"../../../../../..{canary}",
        str(canary),
        "..\\..\\x",
        "1.2\x003",
        "1.2;touch " + str(canary),
        f"`touch {canary}`",
        f"$(touch {canary})",
        "1.2.3/../../4",
    ]
    data_dir = archive_stack.stack.data_dir
    imaging = archive_stack.stack.imaging_settings.data_dir
    before = _files(data_dir)
    answer = archive_stack.stow([hostile.with_uid(v) for v in values] + [part10(instance())])
    assert answer.status_code == 202, answer.text
    assert len(failure_reasons(answer.json())) == len(values)

    assert not canary.exists()
    new = _files(data_dir) - before
    journal = archive_stack.stack.ehr_settings.data_dir / "audit-journal"  # the EHR's AuditEvents
    outside = {p for p in new if imaging not in p.parents and journal not in p.parents and p.suffix != ".log"}
    assert not outside, outside
    blobs = Path(archive_stack.stack.imaging_settings.resolved_blob_store)
    for path in new:
        if blobs in path.parents:  # content-addressed: ab/cd/<sha256>
            assert path.relative_to(blobs).parts == (path.name[:2], path.name[2:4], path.name)
            assert len(path.name) == 64
    assert archive_stack.stack.imaging is not None
    assert psutil.Process(archive_stack.stack.imaging.process.pid).children(recursive=True) == []


def test_di11_markup_in_values_is_only_dicom_json_with_nosniff(archive_stack: ArchiveStack) -> None:
    study = generate_uid()
    ds = instance(study=study)
    ds.PatientName = "<script>alert(1)</script>"
    ds.StudyDescription = '<img src=x onerror="alert(2)">'
    assert archive_stack.stow([part10(ds)]).status_code == 200
    archive_stack.retrieve(study)
    base, headers = archive_stack.base, archive_stack.headers(Accept=JSON)
    urls = [
        f"{base}/studies?StudyInstanceUID={study}&includefield=StudyDescription",
        f"{base}/studies/{study}/metadata",
        f"{base}/studies/{generate_uid()}/metadata",  # an error body too (application/json)
    ]
    for url in urls:
        response = httpx.get(url, headers=headers)
        assert response.headers["content-type"].split(";")[0] in (JSON, "application/json"), url
        assert response.headers["x-content-type-options"] == "nosniff", url
    found = httpx.get(urls[0], headers=headers).json()[0]
    assert found["00100010"]["Value"] == [{"Alphabetic": "<script>alert(1)</script>"}]
    assert found["00081030"]["Value"] == ['<img src=x onerror="alert(2)">']


def _with_charset(charset: bytes, name: bytes) -> bytes:
    """An instance whose Specific Character Set and Patient's Name are raw bytes."""
    sop, study = generate_uid(), generate_uid()

    def even(data: bytes, pad: bytes = b" ") -> bytes:
        return data + (pad if len(data) % 2 else b"")

    body = (
        element(0x0008, 0x0005, "CS", even(charset))
        + element(0x0008, 0x0016, "UI", even(b"1.2.840.10008.5.1.4.1.1.2", b"\0"))
        + element(0x0008, 0x0018, "UI", even(sop.encode(), b"\0"))
        + element(0x0010, 0x0010, "PN", even(name))
        + element(0x0010, 0x0020, "LO", even(b"MRN-ARCHIVE-1"))
        + element(0x0020, 0x000D, "UI", even(study.encode(), b"\0"))
        + element(0x0020, 0x000E, "UI", even(generate_uid().encode(), b"\0"))
    )
    return hostile.meta("1.2.840.10008.1.2.1", sop) + body


@pytest.mark.parametrize(
    ("charset", "name"),
    [
        (b"ISO_IR 999", b"M\xfcller^Hans"),  # unknown character set
        (b"ISO_IR 192", b"\xff\xfe\xc3(^Broken"),  # invalid UTF-8
        (b"\\ISO 2022 IR 87", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$)X\x1b(Q\xff"),  # mixed, bogus escapes
        (b"ISO_IR 100\\ISO_IR 192\\GB18030", b"\x80\x81\x82^\xe9"),  # incompatible mixture
    ],
)
def test_di12_bad_character_sets_never_break_store_or_search(
    archive_stack: ArchiveStack, charset: bytes, name: bytes
) -> None:
    answer = archive_stack.stow([_with_charset(charset, name)])
    assert answer.status_code in (200, 400), answer.text
    headers = archive_stack.headers(Accept=JSON)
    for query in ("", "?PatientName=*", "?PatientName=M*&fuzzymatching=true", "?includefield=all"):
        response = httpx.get(f"{archive_stack.base}/studies{query}", headers=headers, timeout=60)
        assert response.status_code == 200, (query, response.text)
        assert isinstance(response.json(), list)
    if answer.status_code == 200:
        study = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0].split("/series/")[0]
        archive_stack.retrieve(study.rsplit("/", 1)[1])
        assert httpx.get(f"{study}/metadata", headers=headers, timeout=60).status_code == 200
