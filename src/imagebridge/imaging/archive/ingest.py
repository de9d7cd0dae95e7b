"""Accepting one DICOM instance: spool, hash, parse, validate (PS3.18 §10.5, PS3.10 §7).

The part body is spooled to disk as it arrives (memory does not grow with instance size) while
its SHA-256 is computed; its structure is checked (:mod:`.guard`), then the header is parsed
without loading pixel data; required UIDs are validated (PS3.5 §9.1) before anything is
indexed. Failures carry the PS3.18 Annex I failure reason code the STOW response reports.

A part that starts with File Meta Information but lacks the 128-byte preamble and ``DICM``
(what pydicom's ``dcmwrite`` writes by default for a data set made in memory, and so what
dicomweb-client's ``store_instances`` sends) is completed into a PS3.10 file (PS3.10 §7.1): zero
preamble, ``DICM``, the File Meta Information with its missing Type 1 elements added (Group
Length, Version, Implementation Class UID); the data set bytes follow exactly as sent. A data
set with no File Meta Information at all is refused: its transfer syntax is unknown.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import tempfile
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info

from imagebridge.imaging.archive import guard, header
from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.uids import is_valid_uid

# Failure Reason (0008,1197) values of the Store Instances Response Module (PS3.18 Annex I,
# PS3.4 Annex GG / Table B.2-1 C-STORE statuses), and the imagebridge-specific ones (Cxxx, the
# "cannot understand" error range; documented in docs/stow-rs.md).
PROCESSING_FAILURE = 0x0110  # server-side failure while storing (PS3.7 Annex C)
DUPLICATE_SOP_CONFLICT = 0x0111  # Duplicate SOP Instance: this SOP Instance UID is stored with other bytes
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources (disk or object store full, instance too large)
DATASET_SOP_CLASS_MISMATCH = 0xA900  # Error: data set does not match SOP Class (file meta vs data set)
CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand (not PS3.10, malformed, invalid UID, missing attribute)
NOT_AUTHORIZED = (
    0x0124  # Refused: Not Authorized (PS3.7 Annex C): the writer may not store for this PatientID
)
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122  # Referenced Transfer Syntax not supported
STUDY_MISMATCH = 0xC409  # imagebridge: Study UID differs from the URL, belongs to another patient,
# or the Series UID belongs to another study
#: Reasons that make an all-failed request a 409 Conflict rather than a 400 (PS3.18 Table 10.5.3-1).
CONFLICTS = frozenset({DUPLICATE_SOP_CONFLICT, STUDY_MISMATCH})

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
#: File meta attributes that must agree with the data set (PS3.10 §7.1).
META_MATCHES = (
    ("MediaStorageSOPClassUID", "SOPClassUID"),
    ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
)


#: What pydicom raises on a file or value it cannot read (BytesLengthException, no ValueError: a
#: value whose length is no multiple of its VR's size; AttributeError: an element it misreads).
UNREADABLE = (
    BytesLengthException,
    ValueError,
    LookupError,
    TypeError,
    AttributeError,
    OverflowError,
    MemoryError,
    RecursionError,
    OSError,
)


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
    pixel_elements: list[dicom_json.PixelElement]  # the element header that ended the reading
    #: Top-level values converted so far, by tag (:func:`dicom_json.instance_json` adds its own).
    values: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def value(self, keyword: str) -> Any:
        """The attribute's value as ``dataset.get(keyword)`` gives it (None when absent), read
        without pydicom making and storing a DataElement where it can (:func:`dicom_json.element_value`),
        and converted once: kept in :attr:`values` (not to be changed)."""
        tag = tag_for_keyword(keyword)
        if tag is None:
            return None
        try:
            return self.values[tag]
        except KeyError:
            pass
        value = dicom_json.element_value(self.dataset, tag) if tag in self.dataset else None
        self.values[tag] = value
        return value

    def attr(self, keyword: str, default: str = "") -> str:
        value = self.value(keyword)
        return default if value is None else str(value)

    def int_attr(self, keyword: str) -> int | None:
        value = self.value(keyword)
        try:
            return None if value in (None, "") else int(value)
        except (TypeError, ValueError):
            return None


PREAMBLE = 128  # PS3.10 §7.1: the File Preamble, then "DICM"
PREFIX = b"DICM"
#: Longest File Meta Information group we complete for a part sent without a preamble.
MAX_FILE_META = 64 * 1024
#: Bytes of a part gathered in memory before they are hashed and written in a worker thread.
SPOOL_WRITE = 1024 * 1024
#: Chunks shorter than this are gathered into one buffer while they wait to be written.
_SMALL_CHUNK = 64 * 1024
_LONG_VRS = frozenset(vr.encode() for vr in guard.LONG_VRS)
_VRS = _LONG_VRS | {vr.encode() for vr in guard.SHORT_VRS}


def _meta_end(head: bytes, final: bool) -> int | None:
    """Where the File Meta Information group (0002,xxxx) at the start of ``head`` ends.

    None when more bytes are needed; ValueError when it is not a well-formed group.
    """
    pos = 0
    while True:
        if pos == len(head) and final:
            return pos
        if len(head) < pos + 8:
            if final:
                raise ValueError("the part ends inside its File Meta Information")
            return None
        if head[pos : pos + 2] != b"\x02\x00":
            return pos
        vr = bytes(head[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if len(head) < pos + 12:
                if final:
                    raise ValueError("the part ends inside its File Meta Information")
                return None
            pos += 12 + struct.unpack_from("<L", head, pos + 8)[0]
        elif vr in _VRS:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
        else:
            raise ValueError("not a File Meta Information element")
        if pos > MAX_FILE_META:
            raise ValueError("File Meta Information too long")


def _completed_meta(meta: bytes) -> bytes:
    """Preamble, ``DICM`` and ``meta`` with its missing Type 1 elements added (PS3.10 Table
    7.1-1); the meta as sent when it cannot be read (the structural check then says why)."""
    out = DicomBytesIO()
    out.write(bytes(PREAMBLE) + PREFIX)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = read_dataset(io.BytesIO(meta), is_implicit_VR=False, is_little_endian=True)
            write_file_meta_info(out, FileMetaDataset(dataset), enforce_standard=True)
    except Exception:  # pydicom raises many types on malformed input
        return bytes(PREAMBLE) + PREFIX + meta
    return out.getvalue()


def file_start(head: bytes, final: bool) -> tuple[bytes, int] | None:
    """What to store instead of the first bytes of a part starting with ``head``: (those bytes,
    how many bytes of ``head`` they replace), or None when more bytes are needed.

    A PS3.10 file gets a zeroed preamble (PS3.10 §7.5 gives it no meaning; security.md DI-10); a
    part starting with File Meta Information is completed into a PS3.10 file (module docstring);
    anything else is kept with its first 128 bytes zeroed, for the structural check to refuse.
    """
    if len(head) < PREAMBLE + len(PREFIX) and not final:
        return None
    if head[PREAMBLE : PREAMBLE + len(PREFIX)] == PREFIX:
        return bytes(PREAMBLE), PREAMBLE
    if head[:2] == b"\x02\x00" and head[4:6] in _VRS:
        try:
            end = _meta_end(head, final)
        except ValueError:
            end = -1
        if end is None:
            return None
        if end >= 0:
            return _completed_meta(head[:end]), end
    return bytes(min(PREAMBLE, len(head))), PREAMBLE


async def _normalised(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` with its start replaced by :func:`file_start` (at most a meta group buffered)."""
    head = b""
    async for chunk in body:
        head += chunk
        start = file_start(head, final=False)
        if start is not None:
            break
    else:  # the part ended before its start could be judged
        start = file_start(head, final=True)
    replaced, offset = start or (b"", 0)  # never None when final
    yield replaced
    if len(head) > offset:
        yield head[offset:]
    async for chunk in body:
        yield chunk


class Spool:
    """A part being spooled: its file (created with its first written bytes), the SHA-256 and size
    so far, and the chunks not written yet (as they came: they are not copied together).
    :meth:`finish` writes those and closes the file, in the worker thread that then judges the
    instance: a part of up to :data:`SPOOL_WRITE` bytes costs that one thread hop, and at most
    :data:`SPOOL_WRITE` bytes wait in memory per part."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.digest = hashlib.sha256()
        self.size = 0
        self.pending: list[bytes | bytearray] = []
        self.pending_size = 0
        self.path: Path | None = None
        self._file: IO[bytes] | None = None

    def add(self, chunk: bytes) -> None:
        """Keep ``chunk`` for the next write; small ones are gathered into one buffer (a body
        sent in tiny chunks costs no list entry per chunk)."""
        self.size += len(chunk)
        self.pending_size += len(chunk)
        if len(chunk) < _SMALL_CHUNK and self.pending and isinstance(self.pending[-1], bytearray):
            self.pending[-1] += chunk
        else:
            self.pending.append(bytearray(chunk) if len(chunk) < _SMALL_CHUNK else chunk)

    def take(self) -> list[bytes | bytearray]:
        """The chunks not written yet, for :meth:`write` (they are no longer pending)."""
        chunks, self.pending, self.pending_size = self.pending, [], 0
        return chunks

    def write(self, chunks: list[bytes | bytearray]) -> None:
        if self._file is None:
            fd, name = tempfile.mkstemp(dir=self.directory, prefix="stow-", suffix=".part")
            self.path = Path(name)
            self._file = os.fdopen(fd, "wb")
        for chunk in chunks:
            self.digest.update(chunk)  # hashlib lets go of the GIL for large buffers
            self._file.write(chunk)

    def finish(self) -> SpooledInstance:
        """Write the pending chunks and close the file (in a worker thread); the file is removed
        if that fails, and a full disk fails with :data:`OUT_OF_RESOURCES`."""
        try:
            self.write(self.take())
            assert self._file is not None  # the write made it
            assert self.path is not None
            self._file.close()
        except OSError as exc:
            self.discard()
            _refuse_if_full(exc)
            raise
        except BaseException:
            self.discard()
            raise
        return SpooledInstance(path=self.path, size=self.size, sha256=self.digest.hexdigest())

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _refuse_if_full(exc: OSError) -> None:
    """A full disk refuses the instance with :data:`OUT_OF_RESOURCES`."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        raise InstanceRejected(OUT_OF_RESOURCES, "no space left to receive the instance") from exc


async def spool(body: AsyncIterator[bytes], directory: Path) -> Spool:
    """Read a part body into a :class:`Spool` in ``directory``, hashing it as it goes; whole
    :data:`SPOOL_WRITE` pieces are written in worker threads, the rest by :meth:`Spool.finish`.

    The start of the file is normalised by :func:`file_start` (zeroed preamble; a preamble-less
    part completed into PS3.10): the stored file, and its SHA-256, are the original bytes from the
    File Meta Information on. The file is removed if anything goes wrong, including the client
    disconnecting (security.md FT-11); a full disk fails with :data:`OUT_OF_RESOURCES`.
    """
    file = Spool(directory)
    try:
        async for chunk in _normalised(body):
            file.add(chunk)
            if file.pending_size >= SPOOL_WRITE:  # one worker-thread hop per SPOOL_WRITE bytes
                await anyio.to_thread.run_sync(file.write, file.take())
    except OSError as exc:
        file.discard()
        _refuse_if_full(exc)
        raise
    except BaseException:
        file.discard()
        raise
    return file


def parse(spooled: SpooledInstance, max_inflated_bytes: int) -> ParsedInstance:
    """Parse and validate a spooled PS3.10 file (run in a worker thread).

    The structure is checked first (:mod:`.guard`: declared lengths, sequence depth, transfer
    syntax, deflate cap), so pydicom never allocates what a hostile header declares; then the
    header is read once, without pixel data (:mod:`.header`, or pydicom for what it leaves; the
    metadata JSON is made from that same data set),
    and the required attributes are validated (DI-04, DI-05).
    """
    try:
        ts = guard.scan(spooled.path, max_inflated_bytes=max_inflated_bytes)
    except guard.Malformed as exc:
        reason = TRANSFER_SYNTAX_NOT_SUPPORTED if exc.unsupported_syntax else CANNOT_UNDERSTAND
        raise InstanceRejected(reason, str(exc)) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about tolerated oddities; we judge below
            read: tuple[Dataset, list[dicom_json.PixelElement]] | None = header.read(spooled.path, ts)
            if read is None:
                with spooled.path.open("rb") as fp:
                    read = dicom_json.read_header(fp)
            ds, pixel_elements = read
            parsed = ParsedInstance(spooled, ds, ts, pixel_elements)
            # the values judged below, converted here, where what pydicom raises is caught
            declared = {keyword: str(ds.file_meta.get(meta, "") or "") for meta, keyword in META_MATCHES}
            for keyword in (*REQUIRED_UIDS, "PatientID"):
                parsed.value(keyword)
    except (InvalidDicomError, EOFError) as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}") from exc
    except UNREADABLE as exc:
        raise InstanceRejected(
            CANNOT_UNDERSTAND, f"the DICOM file cannot be parsed: {type(exc).__name__}"
        ) from exc
    sop_class = parsed.attr("SOPClassUID")
    sop_instance = parsed.attr("SOPInstanceUID")
    for keyword in REQUIRED_UIDS:
        if not is_valid_uid(parsed.attr(keyword)):
            raise InstanceRejected(
                CANNOT_UNDERSTAND, f"{keyword} is missing or not a valid UID", sop_class, sop_instance
            )
    if not parsed.attr("PatientID").strip():
        raise InstanceRejected(CANNOT_UNDERSTAND, "PatientID is missing", sop_class, sop_instance)
    for meta_keyword, keyword in META_MATCHES:
        if declared[keyword] and declared[keyword] != parsed.attr(keyword):
            raise InstanceRejected(
                DATASET_SOP_CLASS_MISMATCH,
                f"the file meta {meta_keyword} differs from the data set's {keyword}",
                sop_class,
                sop_instance,
            )
    return parsed
