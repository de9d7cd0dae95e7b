"""Storage faults during STOW-RS (security.md §5: FT-09, FT-10) against the real imaging process.

FT-10, disk full: the blob volume is a small tmpfs mounted for the test (root only), and the
spool is capped with RLIMIT_FSIZE set on the running process (CPython ignores SIGXFSZ, so the
write fails with EFBIG). A full volume fails the instances that do not fit with 0xA700 (409 when
none was stored, 202 beside stored ones), leaves no partial file, keeps earlier data intact, and
stores again once there is room. FT-09, a failed write or fsync, is injected in process (no
device-mapper here for dm-error, and LazyFS is not installable): nothing is acknowledged, nothing
is left behind, and a later store starts over instead of trusting a retried fsync.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
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
from tests.services import missing

from imagebridge.imaging.archive.blobs import LocalBlobStore
from imagebridge.imaging.archive.ingest import OUT_OF_RESOURCES

MB = 1024 * 1024


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        missing(f"cannot mount a tmpfs for the disk-full test (needs root): {exc}")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 4 MiB tmpfs: the imaging system's blob volume."""
    path = tmp_path_factory.mktemp("blob-volume")
    _mount_tmpfs(path, "4m")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, volume: Path) -> Iterator[ArchiveStack]:
    """An archive stack whose blobs live on the small volume (the spool stays on the main disk)."""
    yield from started(
        tmp_path_factory.mktemp("full-disk-stack"), extra_env={"IMAGEBRIDGE_IMAGING_BLOB_STORE": str(volume)}
    )


def _big(study: str, side: int, seed: int) -> bytes:
    """An instance of about side² x 2 bytes."""
    return part10(instance(study=study, rows=side, columns=side, seed=seed))


def _no_partial_files(stack: ArchiveStack, volume: Path) -> None:
    for path in volume.rglob("*"):
        if path.is_file():
            assert path.parent != volume / ".spool", f"partial copy left behind: {path}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, f"partial blob: {path}"
    assert list((stack.stack.imaging_settings.data_dir / "spool").iterdir()) == []


def test_ft10_disk_full_single_and_batch(stack: ArchiveStack, volume: Path) -> None:
    study = generate_uid()
    earlier = [part10(instance(study=study, number=1, seed=1))]
    assert stack.stow(earlier).status_code == 200

    too_big = _big(study, 1500, 2)  # 4.5 MB on a 4 MiB volume
    single = stack.stow([too_big])
    assert single.status_code == 409, single.text
    assert failure_reasons(single.json()) == [OUT_OF_RESOURCES]
    _no_partial_files(stack, volume)

    fits = part10(instance(study=study, number=3, seed=3))
    batch = stack.stow([_big(study, 700, 4), too_big, fits])
    assert batch.status_code == 202, batch.text
    assert failure_reasons(batch.json()) == [OUT_OF_RESOURCES]
    assert len(referenced_uids(batch.json())) == 2
    _no_partial_files(stack, volume)

    stored = {sha256(p) for p in stack.retrieve(study)}
    assert sha256(earlier[0]) in stored  # earlier data intact
    assert sha256(fits) in stored
    assert len(stored) == 3

    subprocess.run(["mount", "-o", "remount,size=64m", str(volume)], check=True)  # room again
    assert stack.stow([too_big]).status_code == 200
    assert sha256(too_big) in {sha256(p) for p in stack.retrieve(study)}
    _no_partial_files(stack, volume)


def test_ft10_spool_write_failure_is_out_of_resources(stack: ArchiveStack) -> None:
    """RLIMIT_FSIZE on the running process: writing the spooled part fails with EFBIG."""
    assert stack.stack.imaging is not None
    pid = stack.stack.imaging.process.pid
    study = generate_uid()
    soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (2 * MB, hard))
    try:
        answer = stack.stow([_big(study, 1200, 5)])  # 2.9 MB
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
    assert answer.status_code == 409, answer.text
    assert failure_reasons(answer.json()) == [OUT_OF_RESOURCES]
    assert list((stack.stack.imaging_settings.data_dir / "spool").iterdir()) == []
    assert stack.stack.imaging.process.poll() is None  # SIGXFSZ did not kill it
    assert stack.stow([_big(study, 1200, 5)]).status_code == 200


def _failing_fsync(calls: list[int]) -> object:
    def fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(errno.EIO, "Input/output error")

    return fsync


@pytest.mark.parametrize("spool_on", ["same file system", "/dev/shm"])
def test_ft09_failed_fsync_is_never_a_stored_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spool_on: str
) -> None:
    """The put raises, no blob and no copy remain; the next put writes and fsyncs anew."""
    store = LocalBlobStore(tmp_path / "blobs")
    spool = tmp_path if spool_on == "same file system" else Path(tempfile.mkdtemp(dir=spool_on))
    if (spool.stat().st_dev == store.root.stat().st_dev) != (spool == tmp_path):
        pytest.skip(f"{spool_on} is not on another file system here")
    data = b"instance bytes" * 1000
    key = hashlib.sha256(data).hexdigest()

    def spooled() -> Path:
        path = spool / "spool.part"
        path.write_bytes(data)
        return path

    calls: list[int] = []
    try:
        with monkeypatch.context() as patched:
            patched.setattr(os, "fsync", _failing_fsync(calls))
            with pytest.raises(OSError, match="Input/output error"):
                anyio.run(store.put_file, key, spooled())
        assert calls
        assert not anyio.run(store.exists, key)
        assert list(store.spool.iterdir()) == []

        anyio.run(store.put_file, key, spooled())
        assert store.path(key).read_bytes() == data
    finally:
        if spool != tmp_path:
            shutil.rmtree(spool)
