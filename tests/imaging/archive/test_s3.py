"""The S3 blob store against a real S3 server (SeaweedFS on loopback), and the whole imaging
system on PostgreSQL + S3 with two worker processes (issue 5 "Archive")."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from boto3.exceptions import S3UploadFailedError
from pydicom.uid import generate_uid
from tests.imaging.archive.archive_stack import (
    ArchiveStack,
    instance,
    part10,
    referenced_uids,
    sha256,
    started,
)
from tests.imaging.test_durability import archive_cli
from tests.pg import temporary_database
from tests.s3 import S3Server
from tests.services import require_postgres

from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.archive.blobs import open_blob_store
from imagebridge.imaging.archive.s3 import MULTIPART_THRESHOLD, S3BlobStore, S3Credentials, S3Location

pytestmark = pytest.mark.s3


def _store(server: S3Server, bucket: str, secret: str | None = None) -> S3BlobStore:
    credentials = S3Credentials(
        server.endpoint_url, server.access_key_id, secret or server.secret_access_key, server.region
    )
    return S3BlobStore(S3Location(bucket, "archive/blobs"), credentials)


def _spooled(directory: Path, data: bytes) -> tuple[str, Path]:
    path = directory / f"spool-{len(data)}"
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), path


async def _read(store: S3BlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.open(key, start, end)])


def test_put_get_range_list_delete(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, s3_server.new_bucket())
    data = part10(instance())
    key, path = _spooled(tmp_path, data)

    async def run() -> None:
        await store.put_file(key, path)
        assert not path.exists()  # the spool file is gone once the object is durable
        assert await store.exists(key)
        assert await _read(store, key) == data
        assert await _read(store, key, 128, 132) == b"DICM"
        assert await _read(store, key, 132) == data[132:]
        assert (await store.modified(key) or 0) > 0
        listing = store.keys()
        assert [k async for k in listing] == [key]
        await store.delete(key)
        assert not await store.exists(key)
        assert await store.modified(key) is None

    anyio.run(run)


def test_large_files_go_up_in_parts_and_stream_down(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, s3_server.new_bucket())
    data = os.urandom(MULTIPART_THRESHOLD + 3 * 1024 * 1024)
    key, path = _spooled(tmp_path, data)

    async def run() -> None:
        await store.put_file(key, path)
        digest = hashlib.sha256()
        async for chunk in store.open(key):
            assert len(chunk) <= 1024 * 1024
            digest.update(chunk)
        assert digest.hexdigest() == key

    anyio.run(run)


def test_wrong_credentials_are_refused(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, s3_server.new_bucket(), secret="not-the-secret")
    key, path = _spooled(tmp_path, b"x" * 200)
    with pytest.raises(S3UploadFailedError, match=r"SignatureDoesNotMatch|InvalidAccessKeyId"):
        anyio.run(store.put_file, key, path)


def test_settings_name_the_store(s3_server: S3Server) -> None:
    settings = ImagingSettings(
        blob_store="s3://some-bucket/some/prefix",
        s3_endpoint_url=s3_server.endpoint_url,
        s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=s3_server.secret_access_key,
    )
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert store.location == S3Location("some-bucket", "some/prefix")


@pytest.fixture(scope="module")
def scaled(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveStack]:
    """The imaging system on PostgreSQL + S3, ``imagebridge imaging serve --workers 2``."""
    require_postgres()
    with temporary_database("imaging") as url:
        env = s3_server.imaging_env(s3_server.new_bucket())
        yield from started(tmp_path_factory.mktemp("pg-s3"), database_url=url, extra_env=env, workers=2)


def test_stow_and_wado_on_postgres_and_s3_with_two_workers(scaled: ArchiveStack, s3_server: S3Server) -> None:
    study = generate_uid()
    files = [part10(instance(study=study, number=i, seed=i, rows=128, columns=128)) for i in range(6)]
    for half in (files[:3], files[3:]):  # two requests, likely served by different workers
        answer = scaled.stow(half)
        assert answer.status_code == 200, answer.text
        assert len(referenced_uids(answer.json())) == 3
    for _ in range(4):  # every worker answers with the same archive
        assert sorted(sha256(p) for p in scaled.retrieve(study)) == sorted(sha256(f) for f in files)

    bucket = scaled.stack.extra_imaging_env["IMAGEBRIDGE_IMAGING_BLOB_STORE"].split("/")[2]
    s3_server.client().put_object(Bucket=bucket, Key="blobs/" + "0" * 64, Body=b"orphan")
    code, report = archive_cli(scaled, "fsck")
    assert code == 0
    assert (report["rows"], report["blobs"], report["orphan_blobs"]) == (6, 7, ["0" * 64])
    _, swept = archive_cli(scaled, "sweep", "--grace", "0")
    assert swept["orphan_blobs"] == ["0" * 64]
