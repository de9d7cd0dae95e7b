"""An S3-compatible blob store (``blob_store = "s3://bucket/prefix"``), on boto3 in worker threads.

Objects are named ``<prefix>/<sha256>`` (content-addressed, like the folder store: names never
derive from UIDs, security.md DI-06). ``put_file`` returns only after the server answered 200 to
the PUT (or to CompleteMultipartUpload for files over :data:`MULTIPART_THRESHOLD`), which is what
S3 promises as durable (ARCHITECTURE.md invariant 5). Reads are ranged GETs (RFC 9110 §14)
streamed in :data:`CHUNK`-sized pieces, so memory does not grow with object size. Tested against
SeaweedFS (tests/s3.py); any server speaking AWS Signature V4 with path-style addressing works.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from imagebridge.imaging.archive.blobs import CHUNK, check_key

#: Files larger than this are uploaded in parts of this size (S3 allows 5 MiB to 5 GiB per part).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """``s3://bucket/some/prefix`` → bucket and prefix (without surrounding slashes)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3://bucket/prefix location: {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, blob_key: str) -> str:
        check_key(blob_key)
        return f"{self.prefix}/{blob_key}" if self.prefix else blob_key


@dataclass(frozen=True)
class S3Credentials:
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""
    region: str = "us-east-1"


class S3BlobStore:
    """Blobs as objects in one bucket under one prefix."""

    def __init__(self, location: S3Location, credentials: S3Credentials) -> None:
        self.location = location
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=credentials.endpoint_url or None,
            aws_access_key_id=credentials.access_key_id or None,
            aws_secret_access_key=credentials.secret_access_key or None,
            region_name=credentials.region or None,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                max_pool_connections=32,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_THRESHOLD,
            use_threads=False,
        )

    async def put_file(self, key: str, source: Path) -> None:
        """Upload ``source``, then remove it.

        An existing object (same key, so same bytes) is written again: that refreshes its
        modification time, so the orphan sweep's grace period starts over for it.
        """
        await anyio.to_thread.run_sync(self._upload, key, source)
        await anyio.Path(source).unlink(missing_ok=True)

    async def sync(self, keys: Collection[str]) -> None:
        """Nothing to do: an object is durable once its PUT was answered 200."""

    def _upload(self, key: str, source: Path) -> None:
        self.client.upload_file(
            str(source), self.location.bucket, self.location.key(key), Config=self.transfer
        )

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        if end is not None and end <= start:
            return
        byte_range = f"bytes={start}-{'' if end is None else end - 1}"
        response = await anyio.to_thread.run_sync(
            lambda: self.client.get_object(
                Bucket=self.location.bucket, Key=self.location.key(key), Range=byte_range
            )
        )
        body = response["Body"]
        try:
            while True:
                chunk: bytes = await anyio.to_thread.run_sync(body.read, CHUNK)
                if not chunk:
                    break
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                body.close()

    async def exists(self, key: str) -> bool:
        return await self.modified(key) is not None

    async def modified(self, key: str) -> float | None:
        try:
            head = await anyio.to_thread.run_sync(
                lambda: self.client.head_object(Bucket=self.location.bucket, Key=self.location.key(key))
            )
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _MISSING:
                return None
            raise
        return float(head["LastModified"].timestamp())

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.client.delete_object(Bucket=self.location.bucket, Key=self.location.key(key))
        )

    async def keys(self) -> AsyncIterator[str]:
        prefix = f"{self.location.prefix}/" if self.location.prefix else ""
        token: str | None = None
        while True:
            args: dict[str, Any] = {"Bucket": self.location.bucket, "Prefix": prefix}
            if token:
                args["ContinuationToken"] = token
            page = await anyio.to_thread.run_sync(functools.partial(self.client.list_objects_v2, **args))
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(prefix) :]
                if len(name) == 64:
                    yield name
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
