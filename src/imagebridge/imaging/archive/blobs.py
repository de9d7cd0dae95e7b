"""Blob stores for original DICOM bytes: a local folder (default) and S3-compatible storage.

Blobs are content-addressed (SHA-256 of the bytes): storage paths never derive from UIDs
(security.md DI-06), identical re-sends are idempotent, and an unreferenced blob can be swept.
A blob is durable once ``sync`` has returned for it: the local store fsyncs each file before it
gets its name, and ``sync`` fsyncs the folders (once for a whole batch of blobs). The local store
may live on another file system than the STOW spool (a separate volume for images): blobs are
then copied in.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import anyio

from imagebridge.common.durable_dirs import fsync_dir, make_dirs

if TYPE_CHECKING:
    from imagebridge.common.settings import ImagingSettings

CHUNK = 1024 * 1024
_KEY = re.compile(r"[0-9a-f]{64}")


def check_key(key: str) -> str:
    """``key`` if it is a SHA-256 hex digest (the only names a blob may have), else ValueError."""
    if not _KEY.fullmatch(key):
        raise ValueError("blob keys are SHA-256 hex digests")
    return key


class BlobStore(Protocol):
    """Where instance bytes live. Keys are SHA-256 hex digests."""

    async def put_file(self, key: str, source: Path) -> None:
        """Put the spooled file ``source`` under ``key`` (idempotent; ``source`` is gone after a
        success); durable after :meth:`sync`."""

    async def sync(self, keys: Collection[str]) -> None:
        """Make the blobs put under ``keys`` durable (ARCHITECTURE.md invariant 5)."""

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the blob."""

    async def exists(self, key: str) -> bool: ...

    async def modified(self, key: str) -> float | None:
        """When the blob was written (epoch seconds), or None if it does not exist."""

    async def delete(self, key: str) -> None: ...

    def keys(self) -> AsyncIterator[str]:
        """Every stored key (for the orphan sweep)."""


class LocalBlobStore:
    """Blobs as files under ``root/ab/cd/<sha256>``, written atomically and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / ".spool"
        make_dirs(self.spool)

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:4] / key

    async def put_file(self, key: str, source: Path) -> None:
        await anyio.to_thread.run_sync(self.put_now, key, source)

    def put_now(self, key: str, source: Path) -> None:
        """:meth:`put_file` in the calling (worker) thread: give ``source`` the blob's name; the
        file is fsynced before it has that name, so a blob under its name always holds all its
        bytes. The new entry needs :meth:`sync`."""
        target = self.path(key)
        if target.exists():
            source.unlink(missing_ok=True)
            os.utime(target)  # fresh again: the orphan sweep's grace period starts over
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.stat().st_dev != self.root.stat().st_dev:
            self._copy_in(source, target)
        else:
            with source.open("rb") as fh:
                os.fsync(fh.fileno())
            os.replace(source, target)

    async def sync(self, keys: Collection[str]) -> None:
        """Fsync the blobs' folders and the folders above them, each once: the blobs' entries
        and any folder made for them (``ab/``, ``ab/cd/``) survive a crash. POSIX promises
        nothing for a new entry until its folder is fsynced. A batch pays about one journal
        commit: after the first fsync the other folders are clean, and their fsyncs are cheap."""
        folders: dict[Path, None] = {}
        for key in keys:
            folder = self.path(key).parent
            folders.update(dict.fromkeys((folder, folder.parent, self.root)))
        if folders:
            await anyio.to_thread.run_sync(_fsync_dirs, list(folders))

    def _copy_in(self, source: Path, target: Path) -> None:
        """The spooled file is on another file system (a rename would fail with EXDEV): copy it
        into this store's own spool, fsync, then rename. A failed write or fsync (disk full,
        EIO) leaves no file behind and raises: the instance is never acknowledged."""
        fd, name = tempfile.mkstemp(dir=self.spool, suffix=".part")
        copy = Path(name)
        try:
            with source.open("rb") as src, os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(copy, target)
        except BaseException:
            copy.unlink(missing_ok=True)
            raise
        source.unlink(missing_ok=True)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes ``[start, end)`` in chunks of up to :data:`CHUNK`, read in a worker
        thread; a blob that fits in one chunk (most DICOM instances) costs one thread hop."""
        remaining = None if end is None else end - start

        def first() -> tuple[bytes, BinaryIO | None]:
            fh = self.path(key).open("rb")
            try:
                fh.seek(start)
                want = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = fh.read(want)
            except BaseException:
                fh.close()
                raise
            if len(chunk) < want or len(chunk) == remaining:
                fh.close()
                return chunk, None
            return chunk, fh

        chunk, fh = await anyio.to_thread.run_sync(first)
        try:
            if chunk:
                yield chunk
            if fh is None:
                return
            if remaining is not None:
                remaining -= len(chunk)
            while remaining is None or remaining > 0:
                chunk = await anyio.to_thread.run_sync(
                    fh.read, CHUNK if remaining is None else min(CHUNK, remaining)
                )
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            if fh is not None:
                await anyio.to_thread.run_sync(fh.close)

    async def exists(self, key: str) -> bool:
        return self.path(key).exists()

    async def modified(self, key: str) -> float | None:
        try:
            return self.path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def keys(self) -> AsyncIterator[str]:
        for path in self.root.glob("??/??/*"):
            if len(path.name) == 64:
                yield path.name


def _fsync_dirs(paths: list[Path]) -> None:
    for path in paths:
        fsync_dir(path)


def open_blob_store(settings: ImagingSettings) -> BlobStore:
    """The blob store the settings name: ``s3://bucket/prefix`` (with the ``s3_*`` settings) or a folder."""
    location = settings.resolved_blob_store
    if location.startswith("s3://"):
        from imagebridge.imaging.archive.s3 import S3BlobStore, S3Credentials, S3Location

        credentials = S3Credentials(
            settings.s3_endpoint_url,
            settings.s3_access_key_id,
            settings.s3_secret_access_key,
            settings.s3_region,
        )
        return S3BlobStore(S3Location.parse(location), credentials)
    return LocalBlobStore(Path(location))
