"""WADO-RS bulk data (PS3.18 §10.4.1.1.5) with HTTP Range, against the running imaging system."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tests.conftest import TEST_SCALE, RunningStack
from tests.imaging.tokens import quality_review_token

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import iter_multipart
from imagebridge.apps.synthetic import generate_study

MULTIPART = 'multipart/related; type="application/octet-stream"'


@pytest.fixture(scope="module")
def reviewer(running: RunningStack) -> Iterator[httpx.Client]:
    token = quality_review_token(running)
    with httpx.Client(
        base_url=running.dicomweb_base, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        yield http


@pytest.fixture(scope="module")
def pixel_data(running: RunningStack) -> tuple[str, bytes]:
    """The Pixel Data BulkDataURI of the first instance of Alice's cardiac MR, and its bytes."""
    spec = next(s for s, _ in demo_data.studies(TEST_SCALE) if s.accession_number == "ACC-1004")
    ds = next(iter(generate_study(spec)))
    url = (
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )
    return url, bytes(ds.PixelData)


def test_multipart_by_default(reviewer: httpx.Client, pixel_data: tuple[str, bytes]) -> None:
    url, expected = pixel_data
    with reviewer.stream("GET", url, headers={"Accept": MULTIPART}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(MULTIPART)
        assert response.headers["accept-ranges"] == "bytes"
        assert list(iter_multipart(response)) == [expected]
    with reviewer.stream("GET", url) as response:  # no Accept: the multipart default
        assert list(iter_multipart(response)) == [expected]


def test_single_octet_stream_when_asked(reviewer: httpx.Client, pixel_data: tuple[str, bytes]) -> None:
    url, expected = pixel_data
    response = reviewer.get(url, headers={"Accept": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/octet-stream")
    assert response.headers["content-length"] == str(len(expected))
    assert response.content == expected


def test_ranges(reviewer: httpx.Client, pixel_data: tuple[str, bytes]) -> None:
    url, expected = pixel_data
    size = len(expected)
    plain = reviewer.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=100-199"})
    assert plain.status_code == 206
    assert plain.headers["content-range"] == f"bytes 100-199/{size}"
    assert plain.content == expected[100:200]
    tail = reviewer.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=-10"})
    assert tail.content == expected[-10:]
    with reviewer.stream("GET", url, headers={"Accept": MULTIPART, "Range": "bytes=0-15"}) as related:
        assert related.status_code == 206
        assert list(iter_multipart(related)) == [expected[:16]]
    outside = reviewer.get(url, headers={"Accept": "application/octet-stream", "Range": f"bytes={size}-"})
    assert outside.status_code == 416
    assert outside.headers["content-range"] == f"bytes */{size}"
    several = reviewer.get(url, headers={"Accept": "application/octet-stream", "Range": "bytes=0-1,4-5"})
    assert several.status_code == 200
    assert several.content == expected


def test_errors(running: RunningStack, reviewer: httpx.Client, pixel_data: tuple[str, bytes]) -> None:
    url, _ = pixel_data
    instance = url.rsplit("/bulkdata/", 1)[0]
    assert reviewer.get(f"{instance}/bulkdata/7FE0001").status_code == 400
    assert reviewer.get(f"{instance}/bulkdata/7FE00010/0").status_code == 400
    missing = reviewer.get(f"{instance}/bulkdata/00091010")
    unknown = reviewer.get("/studies/2.25.1/series/2.25.2/instances/2.25.3/bulkdata/7FE00010")
    assert missing.status_code == unknown.status_code == 404
    assert missing.content == unknown.content
    assert reviewer.get(url, headers={"Accept": "image/jpeg"}).status_code == 406
    bob = next(s for s, _ in demo_data.studies(TEST_SCALE) if s.accession_number == "ACC-2001")
    ds = next(iter(generate_study(bob)))
    foreign = reviewer.get(
        f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010"
    )
    assert foreign.status_code == 404
    assert foreign.content == unknown.content
