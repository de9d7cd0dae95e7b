"""The folder blob store and the orphan sweep / fsck (archive/blobs.py, archive/sweep.py)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import anyio
import pytest
from tests.imaging.archive.archive_stack import instance, part10

from imagebridge.common import db
from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.app import migrate
from imagebridge.imaging.archive.blobs import LocalBlobStore
from imagebridge.imaging.archive.index import Entry, Index, Stored
from imagebridge.imaging.archive.ingest import ParsedInstance, SpooledInstance, parse
from imagebridge.imaging.archive.sweep import fsck, sweep

HOUR = 3600.0


def _spool(directory: Path, data: bytes) -> SpooledInstance:
    path = directory / f"{hashlib.sha256(data).hexdigest()}.part"
    path.write_bytes(data)
    return SpooledInstance(path, len(data), hashlib.sha256(data).hexdigest())


def _age(store: LocalBlobStore, key: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(store.path(key), (then, then))


def test_blob_store_is_content_addressed_and_ranged(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = part10(instance())
    spooled = _spool(tmp_path, data)

    async def run() -> None:
        await store.put_file(spooled.sha256, spooled.path)
        assert not spooled.path.exists()
        assert b"".join([c async for c in store.open(spooled.sha256, 128, 132)]) == b"DICM"
        listing = store.keys()
        assert [k async for k in listing] == [spooled.sha256]
        with pytest.raises(ValueError, match="SHA-256"):
            store.path("../../etc/passwd")

    anyio.run(run)


@pytest.mark.parametrize(
    "key",
    [
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "a" * 63 + "\n",
        "a" * 64 + "\n",
        "g" * 64,
        "\u0660" * 64,
        "",
        "../" + "a" * 61,
    ],
)
def test_only_lower_case_sha256_hex_digests_name_blobs(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    assert store.path("0123456789abcdef" * 4).name == "0123456789abcdef" * 4
    with pytest.raises(ValueError, match="SHA-256"):
        store.path(key)


def test_put_of_an_existing_blob_restarts_its_grace_period(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = part10(instance())

    async def run() -> None:
        first = _spool(tmp_path, data)
        await store.put_file(first.sha256, first.path)
        _age(store, first.sha256, 2 * HOUR)
        again = _spool(tmp_path, data)
        await store.put_file(again.sha256, again.path)
        assert (await store.modified(first.sha256) or 0) > time.time() - HOUR

    anyio.run(run)


def test_fsck_and_sweep(tmp_path: Path) -> None:
    settings = ImagingSettings(data_dir=tmp_path)
    migrate(settings)
    engine = db.create_engine(settings.resolved_database_url)
    store = LocalBlobStore(tmp_path / "blobs")
    spool = tmp_path / "spool"
    spool.mkdir()

    async def stored(data: bytes, indexed: bool) -> ParsedInstance:
        parsed = parse(_spool(spool, data), 1 << 20)
        await store.put_file(parsed.spooled.sha256, parsed.spooled.path)
        if indexed:
            await store.sync([parsed.spooled.sha256])
            [outcome] = await Index(engine).add([Entry(parsed, b"[]", b"{}", b"{}")])
            assert isinstance(outcome, Stored)
        return parsed

    async def run() -> None:
        kept = await stored(part10(instance(seed=1)), indexed=True)
        old_orphan = await stored(part10(instance(seed=2)), indexed=False)
        young_orphan = await stored(part10(instance(seed=3)), indexed=False)
        lost = await stored(part10(instance(seed=4)), indexed=True)
        for parsed in (kept, old_orphan, lost):
            _age(store, parsed.spooled.sha256, 2 * HOUR)
        leftover = spool / "stow-crashed.part"
        leftover.write_bytes(b"half a file")
        os.utime(leftover, (time.time() - 2 * HOUR,) * 2)
        await store.delete(lost.spooled.sha256)  # simulate a lost blob: fsck must see it

        report = await fsck(engine, store, spool)
        assert (report.blobs, report.rows) == (3, 2)
        assert sorted(report.orphans) == sorted([old_orphan.spooled.sha256, young_orphan.spooled.sha256])
        assert report.dangling == [lost.attr("SOPInstanceUID")]
        assert report.spool_files == ["stow-crashed.part"]

        swept = await sweep(engine, store, spool, HOUR)
        assert swept.orphans == [old_orphan.spooled.sha256]  # the young one may still be committing
        assert swept.spool_files == ["stow-crashed.part"]
        assert await store.exists(young_orphan.spooled.sha256)
        assert await store.exists(kept.spooled.sha256)
        await engine.dispose()

    anyio.run(run)
