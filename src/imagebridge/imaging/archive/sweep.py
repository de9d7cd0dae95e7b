"""Archive consistency: ``imagebridge imaging fsck`` and ``imagebridge imaging sweep``.

STOW-RS makes a blob durable before it commits the index row (ARCHITECTURE.md invariant 5), so
a crash between the two leaves an *orphan*: a blob no row points to. Orphans are harmless (never
served) and the sweep removes those older than a grace period, so that a blob whose row is about
to be committed is never touched (a put refreshes the blob's modification time). A crash while
receiving leaves a spool file, removed the same way. The opposite, a *dangling* row without its
blob, must never happen; ``fsck`` reports both (security.md FT-07).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common import db
from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.archive.blobs import BlobStore, LocalBlobStore, open_blob_store
from imagebridge.imaging.tables import instances

#: Keys checked against the index per query.
BATCH = 500


@dataclass
class Report:
    """What ``fsck`` found (and ``sweep`` removed)."""

    blobs: int = 0
    rows: int = 0
    orphans: list[str] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)  # SOP Instance UIDs whose blob is missing
    spool_files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "blobs": self.blobs,
            "rows": self.rows,
            "orphan_blobs": self.orphans,
            "dangling_rows": self.dangling,
            "spool_files": self.spool_files,
        }


async def _referenced(engine: AsyncEngine, keys: Sequence[str]) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(instances.c.blob_key).where(instances.c.blob_key.in_(keys)))
        return {str(r.blob_key) for r in rows}


async def _orphans(engine: AsyncEngine, blobs: BlobStore) -> tuple[int, list[str]]:
    count, orphans, batch = 0, [], []
    async for key in blobs.keys():
        count += 1
        batch.append(key)
        if len(batch) >= BATCH:
            orphans += await _unreferenced(engine, batch)
            batch = []
    return count, orphans + (await _unreferenced(engine, batch) if batch else [])


async def _unreferenced(engine: AsyncEngine, keys: Sequence[str]) -> list[str]:
    referenced = await _referenced(engine, keys)
    return [k for k in keys if k not in referenced]


def _old_spool_files(spool: Path, blobs: BlobStore, cutoff: float) -> list[Path]:
    """Files older than ``cutoff`` in the STOW spool and in a local blob store's own spool
    (copies in progress when the STOW spool is on another file system)."""
    folders = [spool, *([blobs.spool] if isinstance(blobs, LocalBlobStore) else [])]
    return [
        p
        for folder in folders
        if folder.is_dir()
        for p in folder.iterdir()
        if p.is_file() and p.stat().st_mtime < cutoff
    ]


async def fsck(engine: AsyncEngine, blobs: BlobStore, spool: Path) -> Report:
    """Count blobs and rows; list orphan blobs, dangling rows and leftover spool files."""
    report = Report()
    report.blobs, report.orphans = await _orphans(engine, blobs)
    async with engine.connect() as conn:
        result = await conn.stream(select(instances.c.sop_uid, instances.c.blob_key))
        async for row in result:
            report.rows += 1
            if not await blobs.exists(row.blob_key):
                report.dangling.append(str(row.sop_uid))
    report.spool_files = [p.name for p in _old_spool_files(spool, blobs, time.time())]
    return report


async def sweep(
    engine: AsyncEngine, blobs: BlobStore, spool: Path, grace_seconds: float, *, dry_run: bool = False
) -> Report:
    """Delete orphan blobs and spool files older than ``grace_seconds``; report what went."""
    cutoff = time.time() - grace_seconds
    report = Report()
    report.blobs, candidates = await _orphans(engine, blobs)
    for key in candidates:
        modified = await blobs.modified(key)
        if modified is None or modified >= cutoff:
            continue
        if await _referenced(engine, [key]):  # a row was committed since the listing
            continue
        if not dry_run:
            await blobs.delete(key)
        report.orphans.append(key)
    for path in _old_spool_files(spool, blobs, cutoff):
        if not dry_run:
            path.unlink(missing_ok=True)
        report.spool_files.append(path.name)
    return report


def run(settings: ImagingSettings, action: str, grace_seconds: float | None, dry_run: bool) -> int:
    """``imagebridge imaging fsck|sweep``: print the report as JSON; fsck fails on dangling rows."""
    engine = db.create_engine(settings.resolved_database_url, pool_size=2)
    blobs = open_blob_store(settings)
    spool = settings.data_dir / "spool"

    async def go() -> Report:
        try:
            if action == "fsck":
                return await fsck(engine, blobs, spool)
            grace = settings.orphan_grace_seconds if grace_seconds is None else grace_seconds
            return await sweep(engine, blobs, spool, grace, dry_run=dry_run)
        finally:
            await engine.dispose()

    report = asyncio.run(go())
    print(json.dumps(report.as_dict(), indent=2))
    return 1 if action == "fsck" and report.dangling else 0
