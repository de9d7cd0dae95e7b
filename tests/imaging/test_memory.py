"""Memory does not grow with study size (issue 5 "Tests that must exist"; ARCHITECTURE.md "Streaming
everywhere"): retrieving a >= 1 GB study keeps the imaging process's RSS growth under 64 MB, and
so does transcoding a multi-frame instance whose decoded pixel data is 320 MiB (frame by frame).

The study (128 CT slices of 2048 x 2048 x 16 bit) is generated here with pydicom and sent by
STOW-RS one request per 16 instances; the test never holds more than one instance itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import psutil
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import RLELossless, generate_uid
from tests.imaging.archive.archive_stack import (
    BOUNDARY,
    STOW_TYPE,
    ArchiveStack,
    instance,
    part10,
)

from imagebridge.apps.smart_client import WADO_ACCEPT

SLICES = 128
SIDE = 2048
PER_REQUEST = 16
LIMIT = 64 * 1024 * 1024


def _slice(study: str, series: str, number: int, pixels: bytes) -> bytes:
    ds = instance(study=study, series=series, number=number, rows=8, columns=8)
    ds.Rows = ds.Columns = SIDE
    ds.PixelData = pixels
    return part10(ds)


def _body(study: str, series: str, numbers: range, pixels: bytes, sizes: list[int]) -> Iterator[bytes]:
    for number in numbers:
        data = _slice(study, series, number, pixels)
        sizes.append(len(data))
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()


class RssSampler(threading.Thread):
    """The largest RSS of a process, sampled every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)


def _answers(http: httpx.Client, url: str, headers: dict[str, str]) -> bool:
    """Whether the study is served yet (the response is dropped after its head: FT-11 too)."""
    with http.stream("GET", url, headers=headers) as response:
        return response.status_code == 200


@pytest.mark.slow
def test_one_gigabyte_study_streams_in_constant_memory(archive_stack: ArchiveStack) -> None:
    study, series = generate_uid(), generate_uid()
    pixels = np.random.default_rng(1).integers(0, 4096, SIDE * SIDE, dtype=np.uint16).tobytes()
    sent: list[int] = []
    with httpx.Client(timeout=300) as http:
        for start in range(0, SLICES, PER_REQUEST):
            answer = http.post(
                f"{archive_stack.base}/studies",
                content=_body(study, series, range(start, start + PER_REQUEST), pixels, sent),
                headers=archive_stack.headers(**{"Content-Type": STOW_TYPE}),
            )
            assert answer.status_code == 200, answer.text

        url = f"{archive_stack.base}/studies/{study}"
        deadline = time.monotonic() + 60
        while not _answers(http, url, archive_stack.headers(Accept=WADO_ACCEPT)):
            assert time.monotonic() < deadline, "the study was never published to the EHR"
            time.sleep(0.2)

        assert archive_stack.stack.imaging is not None
        sampler = RssSampler(archive_stack.stack.imaging.process.pid)
        baseline = sampler.peak
        sampler.start()
        received = 0
        try:
            with http.stream("GET", url, headers=archive_stack.headers(Accept=WADO_ACCEPT)) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes(1024 * 1024):
                    received += len(chunk)
        finally:
            sampler.done.set()
            sampler.join()
    assert len(sent) == SLICES
    assert received > sum(sent) >= 1024**3
    assert sampler.peak - baseline < LIMIT, f"RSS grew by {(sampler.peak - baseline) / 2**20:.1f} MB"


FRAMES, FRAME_SIDE = 160, 1024
FRAME_BYTES = FRAME_SIDE * FRAME_SIDE * 2


def _level(frame: int) -> int:
    """The constant 16-bit value of frame ``frame`` (0-based): each frame is told apart."""
    return (frame % 16) * 4099


def _rle_multiframe(study: str) -> bytes:
    """An RLE Lossless instance of 160 frames of 1024 x 1024 x 16 bit: 320 MiB decoded, ~5 MB stored."""
    encoder = get_encoder(RLELossless)
    shape = {
        "rows": FRAME_SIDE,
        "columns": FRAME_SIDE,
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": 0,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": 1,
    }
    encoded = [
        encoder.encode(np.full((FRAME_SIDE, FRAME_SIDE), _level(k), dtype=np.uint16), **shape)
        for k in range(16)
    ]
    ds = instance(study=study, rows=8, columns=8)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.Rows = ds.Columns = FRAME_SIDE
    ds.NumberOfFrames = FRAMES
    ds.PixelData = encapsulate([encoded[k % 16] for k in range(FRAMES)])
    ds["PixelData"].VR = "OB"
    return part10(ds)


@pytest.mark.slow
def test_multiframe_transcoding_streams_frame_by_frame(archive_stack: ArchiveStack) -> None:
    """320 MiB of decoded pixels (beyond the old whole-instance limit of 256 MiB) go out as
    Explicit VR Little Endian while the server's RSS grows by less than 64 MB."""
    study = generate_uid()
    answer = archive_stack.stow([_rle_multiframe(study)])
    assert answer.status_code == 200, answer.text
    archive_stack.retrieve(study)  # waits until published; as stored (transfer-syntax=*)

    assert archive_stack.stack.imaging is not None
    sampler = RssSampler(archive_stack.stack.imaging.process.pid)
    baseline = sampler.peak
    sampler.start()
    body = bytearray()  # only the head is kept; pixel bytes are checked as they stream
    offset: int | None = None
    position = 0
    try:
        with (
            httpx.Client(timeout=300) as http,
            http.stream(
                "GET",
                f"{archive_stack.base}/studies/{study}",
                headers=archive_stack.headers(Accept='multipart/related; type="application/dicom"'),
            ) as response,
        ):
            assert response.status_code == 200, response.read()
            assert "transfer-syntax=1.2.840.10008.1.2.1" in response.headers["content-type"]
            for chunk in response.iter_bytes(1024 * 1024):
                if offset is None:
                    body += chunk
                    found = body.find(b"\xe0\x7f\x10\x00OW\x00\x00")
                    if found >= 0:
                        length = int.from_bytes(body[found + 8 : found + 12], "little")
                        assert length == FRAMES * FRAME_BYTES
                        offset = found + 12
                    position = len(body)
                    continue
                for at in (position, position + len(chunk) - 1):  # sample each chunk's ends
                    pixel = at - offset
                    if 0 <= pixel < FRAMES * FRAME_BYTES:
                        frame, byte = divmod(pixel, FRAME_BYTES)
                        assert chunk[at - position] == _level(frame).to_bytes(2, "little")[byte % 2]
                position += len(chunk)
    finally:
        sampler.done.set()
        sampler.join()
    assert offset is not None
    assert position > offset + FRAMES * FRAME_BYTES  # every frame, then the closing delimiter
    assert sampler.peak - baseline < LIMIT, f"RSS grew by {(sampler.peak - baseline) / 2**20:.1f} MB"
