"""Everything one imaging-system process shares between requests."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.archive.blobs import BlobStore
from imagebridge.imaging.archive.index import Index
from imagebridge.imaging.gate.audit import AuditLog
from imagebridge.imaging.gate.gate import Gate
from imagebridge.imaging.publish import Publisher
from imagebridge.imaging.upstream.client import UpstreamClient


@dataclass
class ImagingContext:
    settings: ImagingSettings
    engine: AsyncEngine
    index: Index
    blobs: BlobStore
    gate: Gate
    publisher: Publisher
    http: httpx.AsyncClient
    audit: AuditLog
    #: Proxy mode: the PACS that keeps the archive (None: this system is the archive).
    upstream: UpstreamClient | None = None
