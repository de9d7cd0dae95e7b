"""Simulated power loss right after STOW-RS answers (security.md FT-08) against the real processes.

The imaging system's whole data folder (SQLite index, blobs, spool, audit journal) lives on
:mod:`tests.security.unsynced_fs`, a FUSE file system that keeps only what was fsynced. Each round
stores instances; the moment the answer arrives (or at a random moment while the request is in
flight) the imaging process is killed and the file system "loses power": every write that was not
made durable is gone. The restarted system must still serve every acknowledged instance
byte-identical, and ``fsck`` must find no index row without its blob. A SIGKILL alone (the
durability test) cannot show this: the kernel still writes back the page cache of a killed
process, which is why FT-08 asks for lost unsynced writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import (
    ArchiveStack,
    instance,
    part10,
    referenced_uids,
    sha256,
    started,
)
from tests.imaging.test_durability import archive_cli, stow_in_background
from tests.services import missing

from imagebridge.apps.smart_client import WADO_ACCEPT
from imagebridge.common.audit_journal import Entry, Journal, Origin

ROUNDS = 8
INSTANCES_PER_STOW = 6


class PowerLossVolume:
    """The mounted :class:`UnsyncedFS` (a process of its own) and its control file."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        mountpoint.mkdir(parents=True)
        if not Path("/dev/fuse").exists():
            missing("/dev/fuse is missing: FUSE is needed to simulate power loss (FT-08)")
        log = mountpoint.parent / "unsynced-fs.log"
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.security.unsynced_fs", str(mountpoint)],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait()
                error = log.read_text(errors="replace")[-500:]
                missing(f"cannot mount the FUSE power-loss volume (needs root and libfuse): {error}")
            time.sleep(0.05)

    def command(self, word: str) -> None:
        (self.mountpoint / ".unsynced-fs").write_text(word)

    @contextlib.contextmanager
    def failing_fsync(self) -> Iterator[None]:
        """Every fsync fails with EIO until the block ends."""
        self.command("fail-fsync")
        try:
            yield
        finally:
            self.command("heal")

    def unmount(self) -> None:
        subprocess.run(["umount", str(self.mountpoint)], check=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[PowerLossVolume]:
    """A power-loss volume of its own, without services."""
    mounted = PowerLossVolume(tmp_path / "volume")
    try:
        yield mounted
    finally:
        mounted.unmount()


def test_the_volume_drops_what_a_failed_fsync_did_not_write(volume: PowerLossVolume) -> None:
    """The model is Linux's (FT-09): bytes whose fsync failed are gone for good even though a later
    fsync of the file succeeds; what is written afterwards is written back. A file unlinked while
    open has no link left."""
    root = volume.mountpoint
    fd = os.open(root / "file", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    unlinked = os.open(root / "unlinked", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.write(fd, b"kept\n")
        os.fsync(fd)
        folder = os.open(root, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)
        os.write(fd, b"lost\n")
        with volume.failing_fsync(), pytest.raises(OSError, match="Input/output error"):
            os.fsync(fd)
        os.fsync(fd)  # succeeds, without the bytes that failed
        os.write(fd, b"after\n")
        os.fsync(fd)
        (root / "unlinked").unlink()
        assert os.fstat(unlinked).st_nlink == 0
    finally:
        os.close(fd)
        os.close(unlinked)
    volume.command("crash")
    assert (root / "file").read_bytes() == b"kept\n" + bytes(5) + b"after\n"


#: An fsync journal whose fdatasync fails once, then heals; prints each acknowledged record's key.
_JOURNAL_WRITER = """
import asyncio, sys
from pathlib import Path
from imagebridge.common.audit_journal import Journal, JournalUnavailable

async def never(entries, origin):
    await asyncio.sleep(3600)

async def main():
    root = Path(sys.argv[1])
    journal = Journal(root / "audit-journal", never, fsync=True)

    async def request(key):
        journal.append({"k": key})
        try:
            await journal.durable()  # what DurableResponses waits for before the response
        except JournalUnavailable:
            return
        print(key, flush=True)

    await request("before")
    (root / ".unsynced-fs").write_text("fail-fsync")
    await request("refused")
    (root / ".unsynced-fs").write_text("heal")
    for i in range(3):
        await request(f"after-{i}")
    print("done", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_power_loss_after_a_failed_fdatasync_keeps_every_acknowledged_record(volume: PowerLossVolume) -> None:
    """FT-09 for the audit journal (``audit_fsync`` on): fdatasync fails once with EIO, later
    appends and syncs succeed, the process dies and the power fails. Every record whose request
    was answered (its sync returned) is replayed; the refused one's is not required."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _JOURNAL_WRITER, str(volume.mountpoint)], stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        acknowledged = set(iter(writer.stdout.readline, b"done\n"))
    finally:
        writer.kill()
        writer.wait()
        if writer.stdout is not None:
            writer.stdout.close()
    assert acknowledged == {b"before\n", b"after-0\n", b"after-1\n", b"after-2\n"}
    volume.command("crash")
    replayed: list[str] = []

    async def apply(entries: Sequence[Entry], origin: Origin) -> None:
        replayed.extend(e["k"] for e in entries)

    async def recover() -> int:
        return await Journal(volume.mountpoint / "audit-journal", apply).recover()

    assert asyncio.run(recover()) > 0
    assert {key.decode().strip() for key in acknowledged} <= set(replayed)
    assert len(replayed) == len(set(replayed))  # each once


@pytest.fixture(scope="module")
def power_loss(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ArchiveStack, PowerLossVolume]]:
    """A stack whose imaging data folder is on the power-loss volume; set up, then made durable.
    ``audit_fsync`` is on: the setting that promises audit records survive power loss."""
    data_dir = tmp_path_factory.mktemp("power-loss")
    volume = PowerLossVolume(data_dir / "imaging")
    try:
        for stack in started(data_dir, extra_env={"IMAGEBRIDGE_IMAGING_AUDIT_FSYNC": "true"}):
            volume.command("persist")  # the installation itself was durable before the test
            yield stack, volume
    finally:
        volume.unmount()


def test_the_volume_really_loses_unsynced_writes(power_loss: tuple[ArchiveStack, PowerLossVolume]) -> None:
    """The control: without fsync, data and names are gone after the crash; with it, they stay.
    The imaging process is down meanwhile, as power loss takes it too."""
    stack, volume = power_loss
    assert stack.stack.imaging is not None
    stack.stack.imaging.kill()
    root = volume.mountpoint
    (root / "unsynced").write_bytes(b"lost")
    durable = os.open(root / "synced", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(durable, b"kept")
    os.fsync(durable)
    os.close(durable)
    folder = os.open(root, os.O_RDONLY)
    os.fsync(folder)
    os.close(folder)
    (root / "synced").write_bytes(b"overwritten, not synced")
    volume.command("crash")
    assert (root / "unsynced").read_bytes() == b""  # its name was made durable, its data never
    assert (root / "synced").read_bytes() == b"kept"
    for name in ("unsynced", "synced"):
        (root / name).unlink()
    volume.command("persist")
    stack.stack.start_imaging()


@pytest.mark.slow  # 8 restarts on a file system in Python: about a minute on 2 idle cores
def test_power_loss_after_stow_loses_nothing_acknowledged(
    power_loss: tuple[ArchiveStack, PowerLossVolume],
) -> None:
    stack, volume = power_loss
    rng = random.Random(20261206)
    study = generate_uid()
    acknowledged: dict[str, str] = {}  # SOP Instance UID → SHA-256 of what was sent
    sent: dict[str, str] = {}
    for round_ in range(ROUNDS):
        datasets = [
            instance(study=study, number=round_ * 100 + i, seed=round_ * 100 + i, rows=96, columns=96)
            for i in range(INSTANCES_PER_STOW)
        ]
        parts = [part10(ds) for ds in datasets]
        sent.update({str(ds.SOPInstanceUID): sha256(p) for ds, p in zip(datasets, parts, strict=True)})
        outcome: dict[str, Any] = {}
        thread = stow_in_background(stack, parts, outcome)
        if round_ % 2:  # odd rounds: power fails while the request is still in flight
            thread.join(rng.uniform(0.0, 1.0))
        else:  # even rounds: right after the 200, as FT-08 says
            thread.join(120)
        assert stack.stack.imaging is not None
        stack.stack.imaging.kill()
        volume.command("crash")
        thread.join(60)
        response = outcome.get("response")
        if response is not None and response.status_code in (200, 202):
            acknowledged.update({uid: sent[uid] for uid in referenced_uids(response.json())})
        elif round_ % 2 == 0:
            raise AssertionError(f"round {round_}: the undisturbed STOW failed: {outcome}")
        stack.stack.start_imaging()

    assert acknowledged, "no STOW was acknowledged: the test proved nothing"
    retrieved = {sha256(p) for p in stack.retrieve(study)}
    assert set(acknowledged.values()) <= retrieved  # every acknowledged instance, byte-identical
    assert retrieved <= set(sent.values())  # nothing else, nothing torn
    code, report = archive_cli(stack, "fsck")
    assert code == 0, report
    assert report["dangling_rows"] == []


def test_failed_fsync_is_never_acknowledged_nor_trusted_later(
    power_loss: tuple[ArchiveStack, PowerLossVolume],
) -> None:
    """FT-09 on a real file system: while fsync fails with EIO nothing is acknowledged; once the
    disk heals, storing the same instances again must write them anew (a second fsync of the
    first, failed files would succeed without making anything durable) and survive power loss."""
    stack, volume = power_loss
    study = generate_uid()
    datasets = [instance(study=study, number=i, seed=900 + i, rows=64, columns=64) for i in range(3)]
    parts = [part10(ds) for ds in datasets]
    with volume.failing_fsync():
        failed = stack.stow(parts)
    # the blobs' fsync fails, and so does the audit journal's: no record, no answer but a 503
    assert (failed.status_code, failed.headers.get("Retry-After")) == (503, "5"), failed.text
    assert referenced_uids(failed.json()) == []

    stored = stack.stow(parts)
    assert stored.status_code == 200, stored.text
    assert len(referenced_uids(stored.json())) == len(parts)
    assert stack.stack.imaging is not None
    stack.stack.imaging.kill()
    volume.command("crash")
    stack.stack.start_imaging()
    assert sorted(sha256(p) for p in stack.retrieve(study)) == sorted(sha256(p) for p in parts)


def _audit_after_power_loss(
    stack: ArchiveStack, volume: PowerLossVolume, query: str, *args: str
) -> list[tuple[Any, ...]]:
    """Kill the imaging process, cut the power, start it again (its startup replays what
    survived of the dead journal), and run ``query`` on its audit table."""
    assert stack.stack.imaging is not None
    stack.stack.imaging.kill()
    volume.command("crash")
    stack.stack.start_imaging()
    database = stack.stack.imaging_settings.data_dir / "imaging.sqlite3"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        return conn.execute(query, args).fetchall()


def test_power_loss_after_retrievals_keeps_their_audit_records(
    power_loss: tuple[ArchiveStack, PowerLossVolume],
) -> None:
    """ARCHITECTURE.md: no delivery of imaging bytes without a committed audit record. With
    ``audit_fsync`` on, a record is on stable storage before its response starts, so power lost
    right after the bytes arrived keeps every record (docs/audit.md)."""
    stack, volume = power_loss
    study = generate_uid()
    datasets = [instance(study=study, number=i, seed=700 + i, rows=64, columns=64) for i in range(3)]
    assert stack.stow([part10(ds) for ds in datasets]).status_code == 200
    stack.retrieve(study)  # published: retrievals are allowed from here on
    base = f"{stack.base}/studies/{study}/series"
    with httpx.Client(timeout=60, headers=stack.headers(Accept=WADO_ACCEPT)) as http:
        for ds in datasets:
            response = http.get(f"{base}/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}")
            assert response.status_code == 200, response.text
    delivered = _audit_after_power_loss(
        stack,
        volume,
        "SELECT sop_uid FROM audit WHERE study_uid = ? AND operation = 'retrieve' AND status = 200",
        study,
    )
    assert {sop for (sop,) in delivered} >= {str(ds.SOPInstanceUID) for ds in datasets}


def test_a_retrieval_refused_for_want_of_a_durable_record_is_recorded_as_refused(
    power_loss: tuple[ArchiveStack, PowerLossVolume],
) -> None:
    """FT-09 and AU-01 together: fdatasync fails while a retrieval is answered, so the client gets
    503, and the record of that retrieval says 503 (it said allow/200) even after power loss; the
    same retrieval once the disk heals is served and recorded as 200."""
    stack, volume = power_loss
    study = generate_uid()
    ds = instance(study=study, number=1, seed=800, rows=64, columns=64)
    assert stack.stow([part10(ds)]).status_code == 200
    stack.retrieve(study)  # published: retrievals are allowed from here on
    url = f"{stack.base}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    with httpx.Client(timeout=60, headers=stack.headers(Accept=WADO_ACCEPT)) as http:
        with volume.failing_fsync():
            refused = http.get(url)
        assert (refused.status_code, refused.headers.get("Retry-After")) == (503, "5"), refused.text
        assert http.get(url).status_code == 200
    recorded = _audit_after_power_loss(
        stack,
        volume,
        "SELECT outcome, status FROM audit WHERE sop_uid = ? AND operation = 'retrieve' ORDER BY at",
        str(ds.SOPInstanceUID),
    )
    assert recorded == [("unavailable", 503), ("allow", 200)]
