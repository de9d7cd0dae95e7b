"""Transcoding stored instances to Explicit VR Little Endian for WADO-RS (PS3.18 §8.7.3.5.2).

"The default Transfer Syntax for DICOM Web Services [is] Explicit VR Little Endian" (§9.4.2.4):
a request naming no transfer syntax, or naming 1.2.840.10008.1.2.1, gets every instance in it.
Instances stored compressed are decompressed (pydicom + pylibjpeg / pyjpegls decoders; YBR colour
becomes RGB, Planar Configuration 0), big-endian and implicit-VR ones are re-encoded; the File Meta
Information is rewritten with the new Transfer Syntax UID; the SOP Instance UID is kept.

One instance is transcoded at a time in a worker thread (under :data:`pixels.DECODERS`), within
:data:`pixels.MAX_INSTANCE_BYTES` of decoded pixel data; the rest of a study keeps streaming.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from imagebridge.imaging.archive.blobs import CHUNK, BlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.dicomweb import pixels
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.media import EXPLICIT_VR_LITTLE_ENDIAN


def can_transcode(transfer_syntax: str) -> bool:
    """Whether an instance stored in ``transfer_syntax`` can be sent as Explicit VR Little Endian."""
    uid = UID(transfer_syntax)
    if not uid.is_transfer_syntax:
        return False
    if not uid.is_compressed:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


def to_explicit_little_endian(blobs: BlobStore, row: InstanceRow) -> bytes:
    """The PS3.10 bytes of ``row`` re-encoded in Explicit VR Little Endian (worker thread only)."""
    fp = pixels.open_blob(blobs, row.blob_key, row.size)
    header = pixels.read_header(fp)
    if header.has_pixels:
        header.check_instance_budget()
    if row.size > pixels.MAX_INSTANCE_BYTES:
        raise DicomwebError(413, "this instance is too large to transcode; ask for transfer-syntax=*")
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp)
        ts = ds.file_meta.TransferSyntaxUID
        if ts.is_compressed:
            ds.decompress(generate_instance_uid=False)
        elif not ts.is_little_endian and "PixelData" in ds:
            ds.PixelData = pixels.native_bytes(ds.pixel_array, header.bits_allocated)
            if header.samples > 1:  # the decoded array is colour-by-pixel, YBR converted to RGB
                ds.PlanarConfiguration = 0
                if str(ds.PhotometricInterpretation).startswith("YBR_FULL"):
                    ds.PhotometricInterpretation = "RGB"
        encoded = Dataset(ds)  # a fresh data set: no memory of the original encoding
        encoded.file_meta = FileMetaDataset(ds.file_meta)
        encoded.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        out = io.BytesIO()
        dcmwrite(out, encoded, enforce_file_format=True)
    except DicomwebError:
        raise
    except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
        raise DicomwebError(
            406,
            f"instance {row.sop_uid} in transfer syntax {row.transfer_syntax_uid} cannot be "
            f"transcoded to {EXPLICIT_VR_LITTLE_ENDIAN} ({exc}); ask for transfer-syntax=*",
        ) from exc
    return out.getvalue()


async def transcoded(blobs: BlobStore, row: InstanceRow) -> bytes:
    """``row`` as Explicit VR Little Endian bytes, computed in a worker thread."""
    return await pixels.in_worker(to_explicit_little_endian, blobs, row)


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    """Yield ``data`` in blob-store sized chunks."""
    view = memoryview(data)
    for start in range(0, len(view), CHUNK):
        yield bytes(view[start : start + CHUNK])


async def explicit_little_endian_stream(blobs: BlobStore, row: InstanceRow) -> AsyncIterator[bytes]:
    """Stream ``row`` in Explicit VR Little Endian: stored bytes when already so, else transcoded."""
    if row.transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN:
        async for chunk in blobs.open(row.blob_key):
            yield chunk
        return
    async for chunk in chunks(await transcoded(blobs, row)):
        yield chunk
