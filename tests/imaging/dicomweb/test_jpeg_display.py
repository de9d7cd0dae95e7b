"""Colour JPEG Baseline frames decoded for display by Pillow (imaging/dicomweb/jpeg_display.py)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from tests.imaging.dicomweb.pixel_stack import sample_paths

from imagebridge.imaging.dicomweb import jpeg_display, pixels

#: Largest difference between Pillow's and pydicom's decoders (chroma upsampling), out of 255.
TOLERANCE = 5


def _is_ybr_jpeg(path: Path) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd samples (VR not as the transfer syntax says)
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    syntax = getattr(ds.get("file_meta"), "TransferSyntaxUID", None)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    return syntax == pydicom.uid.JPEGBaseline8Bit and photometric.startswith("YBR_FULL")


def _ybr_jpeg_samples() -> list[Path]:
    return [path for path in sample_paths() if _is_ybr_jpeg(path)]


def _refuse(*_: object) -> np.ndarray:
    raise AssertionError("pydicom's decoder was used")


@pytest.mark.parametrize("path", _ybr_jpeg_samples(), ids=lambda p: p.name)
def test_pillow_decodes_like_pydicom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with io.BufferedReader(io.FileIO(path)) as fp:
        header = pixels.read_header(fp)
        for index in sorted({0, header.frames - 1}):
            expected = pixels.decode_frame(fp, header, index)
            with monkeypatch.context() as patched:
                patched.setattr(pixels, "decode_frame", _refuse)
                frame = jpeg_display.display_frame(fp, header, index)
            assert frame.shape == expected.shape
            assert frame.dtype == np.uint8
            assert int(np.abs(frame.astype(np.int16) - expected).max()) <= TOLERANCE


def test_a_stream_unlike_its_header_goes_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A header declaring another size than the JPEG stream's: Pillow would allocate what the
    stream says, so the frame takes pydicom's path (and its budget checks)."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    ds.Rows, ds.Columns = 50, 50
    path = tmp_path / "resized.dcm"
    ds.save_as(path, enforce_file_format=True)
    sentinel = np.zeros((50, 50, 3), dtype=np.uint8)
    monkeypatch.setattr(pixels, "decode_frame", lambda *_: sentinel)
    with io.BufferedReader(io.FileIO(path)) as fp:
        assert jpeg_display.display_frame(fp, pixels.read_header(fp), 0) is sentinel
