"""Nothing acknowledged is lost (ARCHITECTURE.md invariant 5; security.md FT-07, FT-11).

The imaging process is killed with SIGKILL at random moments during multi-instance STOW-RS
requests, 20 times, and restarted each time. Afterwards every instance named in a delivered
ReferencedSOPSequence is retrieved byte-identical, ``fsck`` finds no index row without its blob,
and ``sweep`` removes the orphan blobs and spool files the crashes left behind.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import (
    STOW_TYPE,
    ArchiveStack,
    instance,
    multipart,
    part10,
    referenced_uids,
    sha256,
    started,
)

KILLS = 20
INSTANCES_PER_STOW = 8


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveStack]:
    yield from started(tmp_path_factory.mktemp("durability"))


def archive_cli(stack: ArchiveStack, *args: str) -> tuple[int, dict[str, Any]]:
    """Run ``imagebridge imaging <args>`` with the stack's settings; exit code and JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "imagebridge", "imaging", *args],
        env={**os.environ, **stack.stack.imaging_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def stow_in_background(stack: ArchiveStack, parts: list[bytes], outcome: dict[str, Any]) -> threading.Thread:
    headers = stack.headers()  # token first: the EHR stays up, only imaging dies

    def send() -> None:
        try:
            with httpx.Client(timeout=60) as http:
                response = http.post(
                    f"{stack.base}/studies",
                    content=_multipart_stream(parts),
                    headers={**headers, "Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
                )
            outcome["response"] = response
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def _multipart_stream(parts: list[bytes]) -> Iterator[bytes]:
    """The body in small pieces, so that kills land while parts are still arriving too."""
    body = multipart(parts)
    for start in range(0, len(body), 64 * 1024):
        yield body[start : start + 64 * 1024]


@pytest.mark.slow  # 20 restarts of the imaging process: 90 s on 2 idle cores, minutes under load
def test_sigkill_during_stow_loses_nothing_acknowledged(crash_stack: ArchiveStack) -> None:
    rng = random.Random(20261128)
    study = generate_uid()
    acknowledged: dict[str, str] = {}  # SOP Instance UID → SHA-256 of what was sent
    sent: dict[str, str] = {}

    def batch(round_: int) -> list[bytes]:
        datasets = [
            instance(study=study, number=round_ * 100 + i, seed=round_ * 100 + i, rows=128, columns=128)
            for i in range(INSTANCES_PER_STOW)
        ]
        parts = [part10(ds) for ds in datasets]
        sent.update({str(ds.SOPInstanceUID): sha256(p) for ds, p in zip(datasets, parts, strict=True)})
        return parts

    # how long one undisturbed request takes on this machine now: kills are spread over it
    started_at = time.monotonic()
    calibration = crash_stack.stow(batch(KILLS))
    span = 1.2 * (time.monotonic() - started_at)
    assert calibration.status_code == 200, calibration.text
    acknowledged.update({uid: sent[uid] for uid in referenced_uids(calibration.json())})
    for round_ in range(KILLS):
        parts = batch(round_)
        outcome: dict[str, Any] = {}
        thread = stow_in_background(crash_stack, parts, outcome)
        time.sleep(rng.uniform(0.0, span))
        assert crash_stack.stack.imaging is not None
        crash_stack.stack.imaging.kill()
        thread.join(60)
        response = outcome.get("response")
        if response is not None and response.status_code in (200, 202):
            for uid in referenced_uids(response.json()):
                acknowledged[uid] = sent[uid]
        crash_stack.stack.start_imaging()

    retrieved = {sha256(p) for p in crash_stack.retrieve(study)}
    assert set(acknowledged.values()) <= retrieved  # every acknowledged instance, byte-identical
    assert retrieved <= set(sent.values())  # nothing else, nothing torn

    code, report = archive_cli(crash_stack, "fsck")
    assert code == 0
    assert report["dangling_rows"] == []
    _, swept = archive_cli(crash_stack, "sweep", "--grace", "0")
    assert set(swept["orphan_blobs"]) == set(report["orphan_blobs"])
    code, after = archive_cli(crash_stack, "fsck")
    assert code == 0
    assert (after["orphan_blobs"], after["dangling_rows"], after["spool_files"]) == ([], [], [])
    assert after["rows"] == after["blobs"] == len(retrieved)
    assert not any(Path(crash_stack.stack.imaging_settings.data_dir, "spool").iterdir())
