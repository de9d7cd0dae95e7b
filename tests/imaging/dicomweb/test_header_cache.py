"""Kept instance headers (imaging/dicomweb/header_cache.py): parsed once per blob key, least
recently used dropped first, bounded by count and by header bytes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from imagebridge.imaging.dicomweb import header_cache
from imagebridge.imaging.dicomweb.header_cache import HeaderCache

CT = Path(get_testdata_file("CT_small.dcm"))


class Counting(io.BufferedReader):
    """A file that counts the reads made through it."""

    reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        Counting.reads += 1
        return super().read(size)


def _header(cache: HeaderCache, key: str, path: Path = CT) -> object:
    with Counting(io.FileIO(path)) as fp:
        return cache.header(key, fp)


def test_a_kept_header_is_not_read_again() -> None:
    cache = HeaderCache()
    first = _header(cache, "a")
    reads = Counting.reads
    assert _header(cache, "a") is first
    assert Counting.reads == reads
    assert cache.kept("a") is first
    assert cache.kept("b") is None


def test_least_recently_used_goes_first() -> None:
    cache = HeaderCache(max_entries=2)
    a = _header(cache, "a")
    _header(cache, "b")
    assert cache.kept("a") is a  # "a" is now the most recently used
    _header(cache, "c")
    assert cache.kept("b") is None
    assert cache.kept("a") is a
    assert len(cache) == 2


def test_bounded_by_header_bytes() -> None:
    with io.BufferedReader(io.FileIO(CT)) as fp:
        cache = HeaderCache()
        cache.header("probe", fp)
        size = fp.tell()
    cache = HeaderCache(max_bytes=2 * size)
    for key in "abc":
        _header(cache, key)
    assert [key for key in "abc" if cache.kept(key)] == ["b", "c"]


def test_a_header_too_large_to_keep_is_still_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(header_cache, "LARGEST", 100)
    cache = HeaderCache()
    assert _header(cache, "a") is not None
    assert len(cache) == 0
