"""CORS and Cross-Origin-Resource-Policy for browser viewers (imaging/dicomweb/cors.py): the pixel
stack grants its one configured viewer origin; an imaging system left at the default grants none."""

from __future__ import annotations

import httpx
import pytest
from starlette.datastructures import Headers
from tests.conftest import RunningStack
from tests.imaging.dicomweb.pixel_stack import VIEWER, PixelStack

from imagebridge.common.settings import ImagingSettings, SettingsError
from imagebridge.imaging.dicomweb.cors import DicomwebCors

Client = tuple[httpx.Client, dict[str, str]]
#: Origins that are not the configured viewer's, some of them close to it.
STRANGERS = (
    "https://evil.example",
    "https://viewer.example.org.evil.com",
    "https://viewer.example.org:444",
    "http://viewer.example.org",
    "null",
)


def _preflight(url: str, requested_headers: str, origin: str = VIEWER) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": requested_headers,
        },
    )


def test_preflight_needs_no_token(pixel_stack: PixelStack) -> None:
    response = _preflight(pixel_stack.url("CT_small.dcm", "/frames/1"), "authorization, accept")
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == VIEWER
    assert response.headers["vary"] == "Origin"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "accept"} <= allowed
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in response.headers


def test_preflight_refuses_unknown_headers(pixel_stack: PixelStack) -> None:
    response = _preflight(pixel_stack.url("CT_small.dcm", "/frames/1"), "x-secret-header")
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", STRANGERS)
def test_other_origins_get_no_grant(pixel_stack: PixelStack, pixel_http: Client, origin: str) -> None:
    http, auth = pixel_http
    url = pixel_stack.url("CT_small.dcm", "/frames/1")
    refused = _preflight(url, "authorization", origin)
    answered = http.get(url, headers={**auth, "Origin": origin})
    assert refused.status_code == 403
    assert answered.status_code == 200  # served (the gate decides), but not readable by that page
    for response in (refused, answered):
        assert "access-control-allow-origin" not in response.headers
        assert "Origin" in response.headers["vary"].split(", ")


def test_gated_response_carries_cors_and_corp(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    response = http.get(pixel_stack.url("CT_small.dcm", "/frames/1"), headers={**auth, "Origin": VIEWER})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == VIEWER
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"content-type", "warning", "etag", "content-range"} <= exposed
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"


def test_gate_still_applies_to_get(pixel_stack: PixelStack) -> None:
    response = httpx.get(pixel_stack.url("CT_small.dcm", "/rendered"), headers={"Origin": VIEWER})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == VIEWER  # the viewer can read the 401
    assert "www-authenticate" in response.headers


def test_corp_without_origin(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    response = http.get(pixel_stack.url("CT_small.dcm", "/thumbnail"), headers=auth)
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize("origin", [VIEWER, *STRANGERS])
def test_default_grants_no_origin(sqlite_stack: RunningStack, origin: str) -> None:
    """An imaging system without ``cors_allowed_origins`` (the shared stack) grants no page, not
    even one a deployment elsewhere would list; CORP and nosniff still go out."""
    url = f"{sqlite_stack.dicomweb_base}/studies"
    refused = _preflight(url, "authorization, accept", origin)
    answered = httpx.get(url, headers={"Origin": origin})
    assert refused.status_code == 403
    assert answered.status_code == 401
    for response in (refused, answered):
        assert "access-control-allow-origin" not in response.headers
        assert "vary" not in response.headers  # nothing depends on the origin
    assert answered.headers["cross-origin-resource-policy"] == "cross-origin"
    assert answered.headers["x-content-type-options"] == "nosniff"


def _preflight_headers(origin: str) -> Headers:
    return Headers({"origin": origin, "access-control-request-method": "GET"})


async def _never(scope: object, receive: object, send: object) -> None:
    raise AssertionError("preflights never reach the application")


def test_configured_origins_are_normalized() -> None:
    """A configured list answers the matching origin only, with Vary: Origin; entries are read as
    origins (case, the default port and a trailing slash do not matter)."""
    cors = DicomwebCors(_never, ["https://Viewer.Example.org:443/", "http://127.0.0.1:3000"])
    assert cors.allow_origin(VIEWER) == VIEWER
    assert cors.allow_origin("http://127.0.0.1:3000") == "http://127.0.0.1:3000"
    for stranger in (*STRANGERS, "http://127.0.0.1:3001", "http://localhost:3000"):
        assert cors.allow_origin(stranger) is None
    good = cors.preflight(VIEWER, _preflight_headers(VIEWER))
    assert good.status_code == 204
    assert good.headers["access-control-allow-origin"] == VIEWER
    assert good.headers["vary"] == "Origin"
    assert (
        cors.preflight("https://evil.example", _preflight_headers("https://evil.example")).status_code == 403
    )


def test_any_origin_only_when_asked_for() -> None:
    """``*`` grants every origin, as ``*`` and without Vary: the answer is the same for all, also
    for a request without ``Origin`` (Fetch §3.2.5: a browser may reuse its cached answer to one)."""
    cors = DicomwebCors(_never, ["*"])
    assert cors.allow_origin("https://evil.example") == "*"
    assert cors.allow_origin(None) == "*"
    answer = cors.preflight("https://evil.example", _preflight_headers("https://evil.example"))
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "vary" not in answer.headers
    assert "access-control-allow-credentials" not in answer.headers
    assert ImagingSettings().cors_allowed_origins == ()


@pytest.mark.parametrize(
    "entry", ["https://viewer.example.org/ohif", "viewer.example.org", f"{VIEWER}/?x", "null"]
)
def test_an_entry_that_is_not_an_origin_is_refused(entry: str) -> None:
    with pytest.raises(SettingsError, match="not an origin"):
        ImagingSettings(cors_allowed_origins=(entry,))
