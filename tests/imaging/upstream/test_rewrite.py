"""Proxy-mode building blocks that need no servers: URL rewriting across chunk boundaries,
QIDO-RS query encoding per upstream quirks, and which caller headers may reach the upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagebridge.common.settings import ImagingSettings, SettingsError
from imagebridge.imaging.upstream.client import ORTHANC_FRAMES_ACCEPT, UpstreamClient, auth_header
from imagebridge.imaging.upstream.proxy import rewritten

OLD, NEW = b"http://pacs:8042/dicom-web", b"https://imaging.example/dicom-web"


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[start:cut]
        start = max(start, cut)
    yield data[start:]


async def _collect(data: bytes, cuts: list[int]) -> bytes:
    return b"".join([c async for c in rewritten(_chunks(data, cuts), OLD, NEW)])


@given(
    st.lists(st.sampled_from([OLD, b'"', b"/studies/1.2", b"http://pacs:80", b"x" * 7]), max_size=12),
    st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_rewriting_a_stream_equals_rewriting_the_whole_body(pieces: list[bytes], cuts: list[int]) -> None:
    data = b"".join(pieces)
    assert asyncio.run(_collect(data, cuts)) == data.replace(OLD, NEW)


def _client(quirks: str) -> UpstreamClient:
    return UpstreamClient(ImagingSettings(upstream_url="http://pacs:8042/dicom-web", upstream_quirks=quirks))


def test_orthanc_gets_qido_values_unescaped_and_others_get_them_encoded() -> None:
    params = [("PatientName", "Doe^J*"), ("StudyDate", "20240101-")]
    assert asyncio.run(_client("orthanc").query_string(params)) == "PatientName=Doe^J*&StudyDate=20240101-"
    assert asyncio.run(_client("").query_string(params)) == "PatientName=Doe%5EJ%2A&StudyDate=20240101-"


def test_the_callers_credentials_and_hop_by_hop_headers_stay_behind() -> None:
    caller = {
        "authorization": "Bearer caller-token",
        "cookie": "s=1",
        "connection": "keep-alive, x-secret",
        "x-secret": "1",
        "accept": 'multipart/related; type="*/*"',
        "range": "bytes=0-9",
    }
    headers = asyncio.run(_client("orthanc").request_headers(caller, identity=False))
    assert headers == {"accept": ORTHANC_FRAMES_ACCEPT, "range": "bytes=0-9", "accept-encoding": "identity"}
    assert asyncio.run(_client("").request_headers(caller, identity=True))["accept"] == caller["accept"]


def test_upstream_auth_forms() -> None:
    assert auth_header("bearer:abc") == {"Authorization": "Bearer abc"}
    assert auth_header("basic:u:p:w") == {"Authorization": "Basic dTpwOnc="}
    assert auth_header("") == {}
    with pytest.raises(SettingsError):
        ImagingSettings(upstream_auth="digest:u:p")
    with pytest.raises(SettingsError):
        ImagingSettings(upstream_quirks="dcm4chee")
