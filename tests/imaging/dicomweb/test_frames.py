"""WADO-RS frames (imaging/dicomweb/frames.py) against the running imaging system.

Expected frames come from pydicom reading the very bytes that were stored.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, get_frame
from tests.imaging.dicomweb.pixel_stack import PixelStack, split_multipart

from imagebridge.imaging.archive.blobs import LocalBlobStore
from imagebridge.imaging.archive.index import InstanceRow
from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.frames import FrameSource, parse_frame_list
from imagebridge.imaging.dicomweb.pixels import native_bytes

Client = tuple[httpx.Client, dict[str, str]]
OCTET = 'multipart/related; type="application/octet-stream"'


def _get(pixel_stack: PixelStack, pixel_http: Client, name: str, frames: str, accept: str) -> httpx.Response:
    http, auth = pixel_http
    return http.get(pixel_stack.url(name, f"/frames/{frames}"), headers={**auth, "Accept": accept})


def _native(pixel_stack: PixelStack, name: str, number: int) -> bytes:
    ds = pixel_stack.samples[name].dataset
    pixels = ds.pixel_array
    frame = pixels if int(ds.get("NumberOfFrames", 1) or 1) == 1 else pixels[number - 1]
    return native_bytes(frame, ds.BitsAllocated)


def _stored_frame(pixel_stack: PixelStack, name: str, number: int) -> bytes:
    ds = pixel_stack.samples[name].dataset
    return get_frame(ds.PixelData, number - 1, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))


def test_single_frame_uncompressed(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _get(pixel_stack, pixel_http, "CT_small.dcm", "1", OCTET)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(OCTET)
    [(headers, body)] = split_multipart(response)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert len(body) == 128 * 128 * 2
    assert body == _native(pixel_stack, "CT_small.dcm", 1)


def test_multi_frame_uncompressed_in_request_order(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _get(pixel_stack, pixel_http, "SC_rgb_2frame.dcm", "2,1,2", OCTET)
    assert response.status_code == 200
    bodies = [body for _, body in split_multipart(response)]
    expected = [_native(pixel_stack, "SC_rgb_2frame.dcm", n) for n in (2, 1, 2)]
    assert bodies == expected


@pytest.mark.parametrize(
    ("name", "media_type", "syntax"),
    [
        ("color3d_jpeg_baseline.dcm", "image/jpeg", "1.2.840.10008.1.2.4.50"),
        ("693_J2KR.dcm", "image/jp2", "1.2.840.10008.1.2.4.90"),
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls", "1.2.840.10008.1.2.4.80"),
        ("SC_rgb_rle_2frame.dcm", "image/x-dicom-rle", "1.2.840.10008.1.2.5"),
    ],
)
def test_compressed_frames_pass_through(
    pixel_stack: PixelStack, pixel_http: Client, name: str, media_type: str, syntax: str
) -> None:
    frames = int(pixel_stack.samples[name].dataset.get("NumberOfFrames", 1) or 1)
    wanted = sorted({1, frames})
    accept = f'multipart/related; type="{media_type}"; transfer-syntax={syntax}'
    response = _get(pixel_stack, pixel_http, name, ",".join(map(str, wanted)), accept)
    assert response.status_code == 200, response.text
    parts = split_multipart(response)
    assert [h["content-type"] for h, _ in parts] == [f"{media_type}; transfer-syntax={syntax}"] * len(wanted)
    assert [body for _, body in parts] == [_stored_frame(pixel_stack, name, n) for n in wanted]


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "color3d_jpeg_baseline.dcm", "MR_small_bigendian.dcm"])
def test_octet_stream_decodes_other_storage(pixel_stack: PixelStack, pixel_http: Client, name: str) -> None:
    frames = int(pixel_stack.samples[name].dataset.get("NumberOfFrames", 1) or 1)
    response = _get(pixel_stack, pixel_http, name, str(frames), OCTET)
    assert response.status_code == 200, response.text
    [(_, body)] = split_multipart(response)
    assert body == _native(pixel_stack, name, frames)


def test_default_accept_prefers_the_stored_compressed_form(
    pixel_stack: PixelStack, pixel_http: Client
) -> None:
    response = _get(pixel_stack, pixel_http, "693_J2KR.dcm", "1", "*/*")
    assert response.status_code == 200
    assert 'type="image/jp2"' in response.headers["content-type"]


def test_unavailable_media_type_is_406_naming_offers(pixel_stack: PixelStack, pixel_http: Client) -> None:
    accept = 'multipart/related; type="image/jp2"'
    response = _get(pixel_stack, pixel_http, "color3d_jpeg_baseline.dcm", "1", accept)
    assert response.status_code == 406
    detail = response.json()["message"]
    assert "image/jpeg" in detail
    assert "application/octet-stream" in detail


@pytest.mark.parametrize("frames", ["0", "a", "1,,2", "-1", "1;2", "１"])
def test_malformed_frame_list_is_400(pixel_stack: PixelStack, pixel_http: Client, frames: str) -> None:
    assert _get(pixel_stack, pixel_http, "CT_small.dcm", frames, OCTET).status_code == 400


def test_frame_beyond_number_of_frames_is_404(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _get(pixel_stack, pixel_http, "SC_rgb_2frame.dcm", "1,3", OCTET)
    assert response.status_code == 404
    assert "has 2 frame" in response.json()["message"]


@pytest.mark.parametrize(
    ("name", "accept"), [("bomb.dcm", OCTET), ("native-bomb.dcm", OCTET), ("bomb.dcm", "*/*")]
)
def test_decode_bombs_are_refused(
    pixel_stack: PixelStack, pixel_http: Client, name: str, accept: str
) -> None:
    response = _get(pixel_stack, pixel_http, name, "1", accept)
    assert response.status_code == 413
    assert "exceeds" in response.json()["message"]


def test_frames_need_a_token(pixel_stack: PixelStack) -> None:
    response = httpx.get(pixel_stack.url("CT_small.dcm", "/frames/1"))
    assert response.status_code == 401


def test_unknown_instance_is_the_common_404(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    url = pixel_stack.url("CT_small.dcm", "/frames/1").replace(
        pixel_stack.samples["CT_small.dcm"].sop_uid, "2.25.1"
    )
    unknown = http.get(url, headers=auth)
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "not_found", "message": "no such study, series or instance"}


def test_parse_frame_list() -> None:
    assert parse_frame_list("3, 1,2") == [3, 1, 2]
    with pytest.raises(DicomwebError):
        parse_frame_list(",".join(["1"] * 10001))


class CountingStore(LocalBlobStore):
    """A real local blob store that counts the bytes it hands out."""

    read = 0

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in super().open(key, start, end):
            self.read += len(chunk)
            yield chunk


def _store(tmp_path: Path, ds: Dataset) -> tuple[CountingStore, InstanceRow]:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    store = CountingStore(tmp_path / "blobs")
    key = hashlib.sha256(data).hexdigest()
    spooled = store.spool / key
    spooled.write_bytes(data)
    anyio.run(store.put_file, key, spooled)
    ts = str(ds.file_meta.TransferSyntaxUID)
    return store, InstanceRow("1.2", "1.2.3", "1.2.3.4", ds.SOPClassUID, ts, key, len(data))


def _many_frames(ts: str) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = 400
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def test_one_frame_reads_only_its_range(tmp_path: Path) -> None:
    """A frame of a 13 MB instance costs its own bytes plus a header read, not the instance."""
    ds = _many_frames("1.2.840.10008.1.2.1")
    frames = np.arange(400 * 128 * 128, dtype=np.uint16).reshape(400, 128, 128)
    ds.PixelData = frames.tobytes()
    store, row = _store(tmp_path, ds)

    async def frame() -> bytes:
        source = FrameSource(store, row)
        await source.load_header()
        start, end = source.native_range(300)
        return b"".join([chunk async for chunk in store.open(row.blob_key, start, end)])

    assert anyio.run(frame) == frames[299].tobytes()
    assert store.read < 256 * 1024


def test_one_compressed_frame_reads_little(tmp_path: Path) -> None:
    """With a Basic Offset Table, frame 300 of 400 is found without reading the others."""
    ds = _many_frames("1.2.840.10008.1.2.4.50")
    fragments = [bytes([n % 256]) * 30000 for n in range(400)]
    ds.PixelData = encapsulate(fragments, has_bot=True)
    ds["PixelData"].VR = "OB"
    store, row = _store(tmp_path, ds)

    async def frame() -> bytes:
        source = FrameSource(store, row)
        await source.load_header()
        return await source.compressed(300)

    assert anyio.run(frame) == fragments[299]
    assert store.read < 256 * 1024
