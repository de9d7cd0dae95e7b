"""Transfer syntax negotiation and transcoding of whole instances (wado.py, transcode.py)."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.pixels.utils import pack_bits
from tests.imaging.dicomweb.pixel_stack import STUDY_UID, PixelStack, split_multipart

from imagebridge.imaging.dicomweb.transcode import _BitPacker, _encapsulated_end, can_transcode

Client = tuple[httpx.Client, dict[str, str]]
DICOM = 'multipart/related; type="application/dicom"'
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _retrieve(pixel_stack: PixelStack, pixel_http: Client, url: str, accept: str) -> httpx.Response:
    http, auth = pixel_http
    return http.get(url, headers={**auth, "Accept": accept})


@pytest.mark.parametrize("accept", [DICOM, f"{DICOM}; transfer-syntax={EXPLICIT_LE}", "*/*"])
def test_compressed_instance_is_transcoded(pixel_stack: PixelStack, pixel_http: Client, accept: str) -> None:
    sample = pixel_stack.samples["693_J2KR.dcm"]
    response = _retrieve(pixel_stack, pixel_http, pixel_stack.url("693_J2KR.dcm"), accept)
    assert response.status_code == 200, response.text
    assert f"transfer-syntax={EXPLICIT_LE}" in response.headers["content-type"]
    [(headers, body)] = split_multipart(response)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == sample.sop_uid
    assert np.array_equal(got.pixel_array, sample.dataset.pixel_array)


def test_wildcard_keeps_stored_bytes(pixel_stack: PixelStack, pixel_http: Client) -> None:
    sample = pixel_stack.samples["693_J2KR.dcm"]
    response = _retrieve(
        pixel_stack, pixel_http, pixel_stack.url("693_J2KR.dcm"), f"{DICOM}; transfer-syntax=*"
    )
    [(headers, body)] = split_multipart(response)
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert body == sample.data


def test_stored_compressed_syntax_by_name(pixel_stack: PixelStack, pixel_http: Client) -> None:
    accept = f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.5"
    response = _retrieve(pixel_stack, pixel_http, pixel_stack.url("MR_small_RLE.dcm"), accept)
    assert response.status_code == 200
    assert [body for _, body in split_multipart(response)] == [pixel_stack.samples["MR_small_RLE.dcm"].data]


def test_unavailable_syntax_is_406_naming_what_is(pixel_stack: PixelStack, pixel_http: Client) -> None:
    accept = f"{DICOM}; transfer-syntax=1.2.840.10008.1.2.4.50"
    response = _retrieve(pixel_stack, pixel_http, pixel_stack.url("MR_small_RLE.dcm"), accept)
    assert response.status_code == 406
    message = response.json()["message"]
    assert "1.2.840.10008.1.2.5" in message
    assert EXPLICIT_LE in message


def test_undecodable_instance_offers_only_stored(pixel_stack: PixelStack, pixel_http: Client) -> None:
    response = _retrieve(pixel_stack, pixel_http, pixel_stack.url("JPEG-lossy.dcm"), DICOM)
    assert response.status_code == 406
    assert "1.2.840.10008.1.2.4.51" in response.json()["message"]


def test_series_of_big_endian_is_transcoded(pixel_stack: PixelStack, pixel_http: Client) -> None:
    sample = pixel_stack.samples["MR_small_bigendian.dcm"]
    url = f"{pixel_stack.base}/studies/{STUDY_UID}/series/{sample.series_uid}"
    [(_, body)] = split_multipart(_retrieve(pixel_stack, pixel_http, url, DICOM))
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, sample.dataset.pixel_array)


def test_transcoding_bomb_is_413(pixel_stack: PixelStack, pixel_http: Client) -> None:
    """A single-instance transcode is refused before the first byte (DI-09)."""
    response = _retrieve(pixel_stack, pixel_http, pixel_stack.url("bomb.dcm"), DICOM)
    assert response.status_code == 413


def test_can_transcode() -> None:
    assert can_transcode("1.2.840.10008.1.2")
    assert can_transcode("1.2.840.10008.1.2.4.90")
    assert not can_transcode("1.2.840.10008.1.2.4.100")  # MPEG-2: no decoder
    assert not can_transcode("1.2.3.4")


def test_bits_run_on_across_frames() -> None:
    """1-bit frames whose size is not a multiple of 8 pack as one bit stream (PS3.5 §8.1.1)."""
    frames = [np.random.default_rng(n).integers(0, 2, (3, 5), dtype=np.uint8) for n in range(4)]
    packer = _BitPacker()
    packed = b"".join(packer.pack(frame) for frame in frames) + packer.flush()
    assert packed == pack_bits(np.concatenate([f.ravel() for f in frames]), pad=False)


@pytest.mark.parametrize("offsets", [[], [0, 12], [0, 9999]])  # none, right, pointing nowhere
def test_encapsulated_end_with_any_basic_offset_table(offsets: list[int]) -> None:
    fragments = [b"abcd", b"efgh"]
    table = b"".join(o.to_bytes(4, "little") for o in offsets)
    item = b"\xfe\xff\x00\xe0"
    data = b"HEAD" + item + len(table).to_bytes(4, "little") + table
    data += b"".join(item + len(f).to_bytes(4, "little") + f for f in fragments)
    end = len(data) + 8
    data += b"\xfe\xff\xdd\xe0" + bytes(4) + b"trailing elements"
    assert _encapsulated_end(io.BufferedReader(io.BytesIO(data)), 4) == end
