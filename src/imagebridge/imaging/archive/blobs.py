"""Blob stores for original DICOM bytes: a local folder (default) and S3-compatible storage.

Blobs are content-addressed (SHA-256 of the bytes): storage paths never derive from UIDs
(security.md DI-06), identical re-sends are idempotent, and an unreferenced blob can be swept.
A blob is durable before ``put`` returns (file and directory fsync).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio

CHUNK = 1024 * 1024


class BlobStore(Protocol):
    """Where instance bytes live. Keys are SHA-256 hex digests."""

    async def put_file(self, key: str, source: Path) -> None:
        """Make the spooled file ``source`` durable under ``key`` (idempotent)."""

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the blob."""

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None: ...

    def keys(self) -> AsyncIterator[str]:
        """Every stored key (for the orphan sweep)."""


class LocalBlobStore:
    """Blobs as files under ``root/ab/cd/<sha256>``, written atomically and fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / ".spool"
        self.spool.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError("blob keys are SHA-256 hex digests")
        return self.root / key[:2] / key[2:4] / key

    async def put_file(self, key: str, source: Path) -> None:
        await anyio.to_thread.run_sync(self._put_sync, key, source)

    def _put_sync(self, key: str, source: Path) -> None:
        target = self.path(key)
        if target.exists():
            source.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with source.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(source, target)
        _fsync_dir(target.parent)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        remaining = None if end is None else end - start
        async with await anyio.open_file(self.path(key), "rb") as fh:
            if start:
                await fh.seek(start)
            while remaining is None or remaining > 0:
                chunk = await fh.read(CHUNK if remaining is None else min(CHUNK, remaining))
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def exists(self, key: str) -> bool:
        return self.path(key).exists()

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def keys(self) -> AsyncIterator[str]:
        for path in self.root.glob("??/??/*"):
            if len(path.name) == 64:
                yield path.name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_blob_store(location: str) -> BlobStore:
    """The blob store named by a setting: a folder path (``s3://`` comes with the S3 store)."""
    if location.startswith("s3://"):
        raise ValueError("S3 blob storage is not configured in this build")
    return LocalBlobStore(Path(location))
