"""Pixel access (imaging/dicomweb/pixels.py): frames decoded from the located Pixel Data value with
the header parsed once give exactly what pydicom gives reading the whole file (PS3.5 §8, A.4)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array
from tests.imaging.dicomweb.pixel_stack import sample_paths

from imagebridge.imaging.dicomweb import pixels


def _decodes(path: Path) -> bool:
    try:
        pixel_array(path, index=0)
    except Exception:  # no pixel data, no codec, or a deliberately broken sample
        return False
    return True


def _decodable() -> list[Path]:
    """Sample files whose first frame pydicom decodes here (native, RLE, JPEG, JPEG-LS, JPEG 2000,
    big endian, implicit VR, deflated, bit-packed, float…)."""
    return [path for path in sample_paths() if _decodes(path)]


def _open(path: Path) -> io.BufferedReader:
    """The file as the rendering worker reads it (pixels.reading)."""
    return io.BufferedReader(io.FileIO(path))


@pytest.mark.parametrize("path", _decodable(), ids=lambda p: p.name)
def test_frames_equal_pydicom(path: Path) -> None:
    with _open(path) as fp:
        header = pixels.read_header(fp)
        if header.frame_samples > pixels.MAX_FRAME_SAMPLES:
            pytest.skip("beyond the decoding budget")
        for index in sorted({0, header.frames // 2, header.frames - 1}):
            ours = pixels.decode_frame(fp, header, index)
            theirs = pixel_array(path, index=index)
            assert ours.dtype == theirs.dtype
            np.testing.assert_array_equal(ours, theirs)


def test_data_set_encoded_unlike_its_transfer_syntax_is_not_located(tmp_path: Path) -> None:
    """An explicit VR data set whose file meta says implicit VR: pydicom reads it as it is, and no
    pixel value (nor native frame range) is taken at an offset computed for the wrong encoding."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)  # explicit VR little endian
    path = tmp_path / "mislabelled.dcm"
    path.write_bytes(out.getvalue().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2\0\0\0", 1))
    with _open(path) as fp, pytest.warns(UserWarning, match="Expected implicit VR, but found explicit VR"):
        header = pixels.read_header(fp)
    assert header.rows == ds.Rows
    assert header.value_offset is None


def test_located_pixel_element() -> None:
    with _open(Path(get_testdata_file("MR_small_RLE.dcm"))) as fp:
        header = pixels.read_header(fp)
    assert (header.keyword, header.vr, header.value_length) == ("PixelData", "OB", None)
    assert header.decode_options["pixel_vr"] == "OB"
