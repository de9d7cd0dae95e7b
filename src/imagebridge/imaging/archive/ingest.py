"""Accepting one DICOM instance: spool, hash, parse, validate (PS3.18 §10.5, PS3.10 §7).

The part body is spooled to disk as it arrives (memory does not grow with instance size) while
its SHA-256 is computed; the header is parsed without loading pixel data; required UIDs are
validated (PS3.5 §9.1) before anything is indexed. Failures carry the PS3.18 Annex I failure
reason code the STOW response reports.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from imagebridge.imaging.dicomweb.uids import is_valid_uid

#: PS3.4 Annex GG / PS3.18 Annex I failure reasons used in FailedSOPSequence.
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
REFERENCED_SOP_CONFLICT = (
    0xA770  # imagebridge: same SOP Instance UID, different bytes (PS3.4 C.4.2.1.4 range A7xx)
)
STUDY_MISMATCH = 0xA771  # imagebridge: study UID of the URL or of another patient
OUT_OF_RESOURCES = 0xA700

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class InstanceRejected(Exception):
    """This instance cannot be stored; ``reason`` is its PS3.18 failure reason code."""

    def __init__(self, reason: int, message: str, sop_class: str = "", sop_instance: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.sop_class = sop_class
        self.sop_instance = sop_instance


@dataclass(frozen=True)
class SpooledInstance:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class ParsedInstance:
    spooled: SpooledInstance
    dataset: Dataset  # header only (no pixel data loaded)
    transfer_syntax_uid: str

    def attr(self, keyword: str, default: str = "") -> str:
        value: Any = self.dataset.get(keyword, default)
        return default if value is None else str(value)

    def int_attr(self, keyword: str) -> int | None:
        value = self.dataset.get(keyword)
        try:
            return None if value in (None, "") else int(value)
        except (TypeError, ValueError):
            return None


async def spool(body: AsyncIterator[bytes], directory: Path) -> SpooledInstance:
    """Write a part body to a temporary file in ``directory``, hashing it as it goes."""
    digest = hashlib.sha256()
    size = 0
    fd, name = tempfile.mkstemp(dir=directory, prefix="stow-", suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        async with await anyio.open_file(path, "wb") as fh:
            async for chunk in body:
                digest.update(chunk)
                size += len(chunk)
                await fh.write(chunk)
    except BaseException:
        await anyio.Path(path).unlink(missing_ok=True)
        raise
    return SpooledInstance(path=path, size=size, sha256=digest.hexdigest())


def parse(spooled: SpooledInstance) -> ParsedInstance:
    """Parse and validate a spooled PS3.10 file (run in a worker thread)."""
    try:
        ds = pydicom.dcmread(spooled.path, stop_before_pixels=True, force=False)
    except (InvalidDicomError, EOFError) as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}") from exc
    except (ValueError, KeyError, TypeError, OverflowError, MemoryError, RecursionError, OSError) as exc:
        raise InstanceRejected(
            CANNOT_UNDERSTAND, f"the DICOM file cannot be parsed: {type(exc).__name__}"
        ) from exc
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_instance = str(ds.get("SOPInstanceUID", ""))
    if not is_valid_uid(ts):
        raise InstanceRejected(
            CANNOT_UNDERSTAND, "the file meta has no valid Transfer Syntax UID", sop_class, sop_instance
        )
    for keyword in REQUIRED_UIDS:
        value = str(ds.get(keyword, ""))
        if not is_valid_uid(value):
            raise InstanceRejected(
                CANNOT_UNDERSTAND, f"{keyword} is missing or not a valid UID", sop_class, sop_instance
            )
    if not str(ds.get("PatientID", "")).strip():
        raise InstanceRejected(CANNOT_UNDERSTAND, "PatientID is missing", sop_class, sop_instance)
    return ParsedInstance(spooled=spooled, dataset=ds, transfer_syntax_uid=ts)
