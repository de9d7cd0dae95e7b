"""WADO-RS metadata (PS3.18 §10.4.1.1.2) against the running imaging system."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from starlette.requests import Request
from tests.conftest import TEST_SCALE, RunningStack
from tests.imaging.tokens import maya_proxy_token, quality_review_token

from imagebridge.apps import demo_data
from imagebridge.imaging.dicomweb.json_body import json_response
from imagebridge.imaging.dicomweb.metadata import BodyCache, absolute_bulkdata_uris, instance_object

SPECS = {spec.accession_number: spec for spec, _ in demo_data.studies(TEST_SCALE)}


@pytest.fixture(scope="module")
def reviewer(running: RunningStack) -> Iterator[httpx.Client]:
    token = quality_review_token(running)
    with httpx.Client(
        base_url=running.dicomweb_base,
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
        timeout=30,
    ) as http:
        yield http


def bulkdata_uris(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "BulkDataURI":
                yield item
            else:
                yield from bulkdata_uris(item)
    elif isinstance(value, list):
        for item in value:
            yield from bulkdata_uris(item)


def test_study_series_and_instance_metadata(running: RunningStack, reviewer: httpx.Client) -> None:
    study = running.seeded.study_uids["ACC-1002"]
    spec = SPECS["ACC-1002"]
    response = reviewer.get(f"/studies/{study}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    instances = response.json()
    assert len(instances) == spec.series_count * spec.instances_per_series
    for instance in instances:
        assert list(instance) == sorted(instance)
        assert instance["0020000D"]["Value"] == [study]
        assert "InlineBinary" not in instance.get("7FE00010", {})
        for uri in bulkdata_uris(instance):
            assert uri.startswith(f"{running.dicomweb_base}/studies/{study}/series/")
    series = instances[0]["0020000E"]["Value"][0]
    in_series = reviewer.get(f"/studies/{study}/series/{series}/metadata").json()
    assert len(in_series) == spec.instances_per_series
    assert all(i["0020000E"]["Value"] == [series] for i in in_series)
    sop = in_series[0]["00080018"]["Value"][0]
    one = reviewer.get(f"/studies/{study}/series/{series}/instances/{sop}/metadata").json()
    assert one == [in_series[0]]


def test_pixel_data_is_described_by_bulkdata_uri(running: RunningStack, reviewer: httpx.Client) -> None:
    study = running.seeded.study_uids["ACC-1004"]
    for instance in reviewer.get(f"/studies/{study}/metadata").json():
        uri = instance["7FE00010"]["BulkDataURI"]
        assert uri.endswith("/bulkdata/7FE00010")


def test_etag_revalidation(running: RunningStack, reviewer: httpx.Client) -> None:
    study = running.seeded.study_uids["ACC-1001"]
    first = reviewer.get(f"/studies/{study}/metadata")
    etag = first.headers["etag"]
    again = reviewer.get(f"/studies/{study}/metadata", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert reviewer.get(f"/studies/{study}/metadata", headers={"If-None-Match": '"other"'}).status_code == 200
    other = reviewer.get(f"/studies/{running.seeded.study_uids['ACC-1004']}/metadata")
    assert other.headers["etag"] != etag


def test_gzip_when_asked(running: RunningStack, reviewer: httpx.Client) -> None:
    url = f"/studies/{running.seeded.study_uids['ACC-1001']}/metadata"
    plain = reviewer.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    with reviewer.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as zipped:
        assert zipped.headers["content-encoding"] == "gzip"
        assert gzip.decompress(b"".join(zipped.iter_raw())) == plain.content
    refused = reviewer.get(url, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/json", 200),
        ("application/dicom+json, */*;q=0.1", 200),
        ("*/*", 200),
        ("text/plain", 406),
        ('multipart/related; type="application/dicom+xml"', 406),
    ],
)
def test_accept_negotiation(running: RunningStack, reviewer: httpx.Client, accept: str, status: int) -> None:
    study = running.seeded.study_uids["ACC-1001"]
    assert reviewer.get(f"/studies/{study}/metadata", headers={"Accept": accept}).status_code == status


def test_foreign_metadata_is_exactly_unknown(running: RunningStack, reviewer: httpx.Client) -> None:
    bob = running.seeded.study_uids["ACC-2002"]
    foreign = reviewer.get(f"/studies/{bob}/metadata")
    unknown = reviewer.get("/studies/2.25.42/metadata")
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.content == unknown.content
    token = maya_proxy_token(running)
    alice = running.seeded.study_uids["ACC-1001"]
    proxied = httpx.get(
        f"{running.dicomweb_base}/studies/{alice}/metadata",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"},
    )
    assert proxied.status_code == 404
    assert proxied.content == unknown.content


def test_body_cache_is_bounded_and_least_recently_used() -> None:
    cache = BodyCache(max_bytes=40)
    cache.put('"a"', b"x" * 10)
    cache.put('"b"', b"y" * 10)
    cache.put('"huge"', b"z" * 11)  # more than a quarter of the budget: not kept
    assert cache.get('"huge"') is None
    assert cache.get('"a"') == b"x" * 10
    cache.put('"c"', b"c" * 10)
    cache.put('"d"', b"d" * 10)
    cache.put('"e"', b"e" * 10)  # over budget: "b", the least recently used, goes
    assert cache.get('"b"') is None
    assert cache.get('"a"') == b"x" * 10


def test_relative_bulkdata_uris_become_absolute() -> None:
    stored = {"00091010": {"vr": "SQ", "Value": [{"00091011": {"vr": "OB", "BulkDataURI": "studies/1/x"}}]}}
    absolute = absolute_bulkdata_uris(stored, "http://h/dicom-web")
    assert absolute["00091010"]["Value"][0]["00091011"]["BulkDataURI"] == "http://h/dicom-web/studies/1/x"
    assert instance_object(b'[{"a":1}]') == b'{"a":1}'
    assert instance_object(b'{"a":1}') == b'{"a":1}'


@pytest.mark.parametrize("size", [2_000, 600_000])
def test_json_bodies_are_gzipped_small_and_large(size: int) -> None:
    request = Request({"type": "http", "headers": [(b"accept-encoding", b"br, gzip;q=0.5")]})
    body = b"[" + b"1," * (size // 2) + b"1]"
    response = anyio.run(json_response, request, body, "application/dicom+json")
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(response.body) == body
