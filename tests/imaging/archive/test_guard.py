"""The structural pre-scan (archive/guard.py): sound files pass, hostile ones fail fast (DI-01..DI-08)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from tests.imaging.archive import hostile
from tests.imaging.archive.archive_stack import instance, part10

from imagebridge.imaging.archive import guard

SAMPLES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm"))
#: pydicom samples that are truncated, lack a transfer syntax, or lie about their VR encoding.
KNOWN_BAD = {"rtplan_truncated.dcm", "MR_truncated.dcm", "meta_missing_tsyntax.dcm", "SC_rgb_jpeg.dcm"}
CAP = 64 * 1024 * 1024


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    return path


def _part10(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


@pytest.mark.parametrize("path", [p for p in SAMPLES if _part10(p)], ids=lambda p: p.name)
def test_pydicom_samples(path: Path) -> None:
    if path.name in KNOWN_BAD:
        with pytest.raises(guard.Malformed):
            guard.scan(path, max_inflated_bytes=CAP)
        return
    ts = guard.scan(path, max_inflated_bytes=CAP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ts == pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID


@pytest.mark.parametrize(
    ("make", "unsupported"),
    [
        pytest.param(hostile.huge_length, False, id="DI-02 huge length"),
        pytest.param(lambda: hostile.huge_length(in_meta=True), False, id="DI-02 huge length in file meta"),
        pytest.param(lambda: hostile.deep_sequence(300), False, id="DI-03 300 deep"),
        pytest.param(lambda: hostile.deep_sequence(10000), False, id="DI-03 10000 deep"),
        pytest.param(lambda: hostile.transfer_syntax("1.2.3.4.5.6"), True, id="DI-07 unknown syntax"),
        pytest.param(hostile.deflate_bomb, False, id="DI-08 deflate bomb"),
        pytest.param(lambda: b"", False, id="DI-01 empty"),
        pytest.param(lambda: b"not dicom at all" * 20, False, id="DI-01 not DICOM"),
        pytest.param(lambda: part10(instance())[:300], False, id="DI-01 truncated header"),
        pytest.param(lambda: part10(instance())[:-10], False, id="DI-01 truncated pixel data"),
    ],
)
def test_hostile_files_are_malformed(tmp_path: Path, make: Callable[[], bytes], unsupported: bool) -> None:
    path = _write(tmp_path, make())
    with pytest.raises(guard.Malformed) as raised:
        guard.scan(path, max_inflated_bytes=CAP)
    assert raised.value.unsupported_syntax is unsupported


def test_nesting_within_the_limit_passes(tmp_path: Path) -> None:
    guard.scan(_write(tmp_path, hostile.deep_sequence(guard.MAX_SEQUENCE_DEPTH)), max_inflated_bytes=CAP)


def test_deflate_within_the_cap_passes(tmp_path: Path) -> None:
    path = _write(tmp_path, hostile.deflate_bomb(inflated=2 * 1024 * 1024))
    assert guard.scan(path, max_inflated_bytes=CAP) == "1.2.840.10008.1.2.1.99"


def test_a_padded_transfer_syntax_is_the_one_pydicom_reads(tmp_path: Path) -> None:
    """pydicom strips whitespace around a UID: the data set is scanned as the deflated one it
    reads, not as the Explicit VR Little Endian element its compressed bytes pose as (DI-08)."""
    path = _write(tmp_path, hostile.disguised_deflate_bomb(inflated=8 * 1024 * 1024))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_deflated
        with pytest.raises(guard.Malformed, match="inflates beyond"):
            guard.scan(path, max_inflated_bytes=1024 * 1024)
