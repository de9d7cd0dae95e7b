"""Pixel access (imaging/dicomweb/pixels.py): frames decoded from the located Pixel Data value with
the header parsed once give exactly what pydicom gives reading the whole file (PS3.5 §8, A.4)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels.utils import pixel_array
from tests.imaging.dicomweb.pixel_stack import sample_paths

from imagebridge.imaging.dicomweb import pixels
from imagebridge.imaging.dicomweb.errors import DicomwebError


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


def _native(tmp_path: Path, stored: np.ndarray, bits_stored: int, signed: bool) -> Path:
    """A native little-endian 16-bit instance whose bits above Bits Stored hold ``stored``'s."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.astype("<u2").tobytes()
    path = tmp_path / f"native-{bits_stored}-{signed}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _no_decoder(_: object) -> object:
    raise AssertionError("pydicom's decoder was used")


@pytest.mark.parametrize("signed", [False, True])
def test_plain_native_frames_skip_pydicom(
    tmp_path: Path, signed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bits above Bits Stored (overlays, garbage) are cleared or copy the sign bit as in pydicom."""
    stored = np.random.default_rng(5).integers(0, 2**16, (7, 9), dtype=np.uint16)
    path = _native(tmp_path, stored, 12, signed)
    expected = pixel_array(path)
    monkeypatch.setattr(pixels, "get_decoder", _no_decoder)
    with _open(path) as fp:
        frame = pixels.decode_frame(fp, pixels.read_header(fp), 0)
    assert frame.dtype == expected.dtype
    np.testing.assert_array_equal(frame, expected)
    assert frame.flags.writeable


def test_plain_native_frame_beyond_the_stored_value_is_406(tmp_path: Path) -> None:
    path = _native(tmp_path, np.zeros((4, 4), dtype=np.uint16), 16, False)
    with _open(path) as fp:
        header = pixels.read_header(fp)
        with pytest.raises(DicomwebError) as refused:
            pixels.decode_frame(
                fp, dataclasses.replace(header, value_length=header.native_frame_bytes - 2), 0
            )
    assert refused.value.status == 406
