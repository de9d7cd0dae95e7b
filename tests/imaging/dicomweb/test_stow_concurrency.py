"""Concurrent STOW-RS of one instance (security.md FT-12): exactly one stored, first bytes win."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from tests.imaging.archive.archive_stack import (
    STOW_TYPE,
    ArchiveStack,
    failure_reasons,
    instance,
    multipart,
    part10,
    sha256,
)

from imagebridge.imaging.archive.ingest import DUPLICATE_SOP_CONFLICT

SENDERS = 20


def _send_all(stack: ArchiveStack, bodies: list[bytes]) -> list[httpx.Response]:
    headers = stack.headers(**{"Content-Type": STOW_TYPE, "Accept": "application/dicom+json"})

    def send(body: bytes) -> httpx.Response:
        with httpx.Client(timeout=60) as http:
            return http.post(f"{stack.base}/studies", content=multipart([body]), headers=headers)

    with ThreadPoolExecutor(SENDERS) as pool:
        return list(pool.map(send, bodies))


def test_same_instance_twenty_times_at_once(archive_stack: ArchiveStack) -> None:
    data = part10(ds := instance())
    answers = _send_all(archive_stack, [data] * SENDERS)
    assert [a.status_code for a in answers] == [200] * SENDERS
    assert archive_stack.retrieve(str(ds.StudyInstanceUID)) == [data]


def test_same_uid_different_bytes_at_once_first_wins(archive_stack: ArchiveStack) -> None:
    first = instance(seed=0)
    bodies = [
        part10(instance(seed=i, sop=str(first.SOPInstanceUID), study=str(first.StudyInstanceUID)))
        for i in range(SENDERS)
    ]
    answers = _send_all(archive_stack, bodies)
    winners = [body for body, a in zip(bodies, answers, strict=True) if a.status_code == 200]
    assert len(winners) == 1
    losers = [a for a in answers if a.status_code != 200]
    assert {a.status_code for a in losers} == {409}
    assert all(failure_reasons(a.json()) == [DUPLICATE_SOP_CONFLICT] for a in losers)
    assert [sha256(p) for p in archive_stack.retrieve(str(first.StudyInstanceUID))] == [sha256(winners[0])]
