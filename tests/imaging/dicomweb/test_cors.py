"""CORS and Cross-Origin-Resource-Policy for browser viewers (imaging/dicomweb/cors.py)."""

from __future__ import annotations

import httpx
from starlette.datastructures import Headers
from tests.imaging.dicomweb.pixel_stack import PixelStack

from imagebridge.imaging.dicomweb.cors import DicomwebCors

Client = tuple[httpx.Client, dict[str, str]]
VIEWER = "https://viewer.example.org"


def _preflight(pixel_stack: PixelStack, requested_headers: str) -> httpx.Response:
    return httpx.options(
        pixel_stack.url("CT_small.dcm", "/frames/1"),
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": requested_headers,
        },
    )


def test_preflight_needs_no_token(pixel_stack: PixelStack) -> None:
    response = _preflight(pixel_stack, "authorization, accept")
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "accept"} <= allowed
    assert "GET" in response.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in response.headers


def test_preflight_refuses_unknown_headers(pixel_stack: PixelStack) -> None:
    response = _preflight(pixel_stack, "x-secret-header")
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_gated_response_carries_cors_and_corp(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    response = http.get(pixel_stack.url("CT_small.dcm", "/frames/1"), headers={**auth, "Origin": VIEWER})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"content-type", "warning", "etag", "content-range"} <= exposed
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"


def test_gate_still_applies_to_get(pixel_stack: PixelStack) -> None:
    response = httpx.get(pixel_stack.url("CT_small.dcm", "/rendered"), headers={"Origin": VIEWER})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == "*"  # the viewer can read the 401
    assert "www-authenticate" in response.headers


def test_corp_without_origin(pixel_stack: PixelStack, pixel_http: Client) -> None:
    http, auth = pixel_http
    response = http.get(pixel_stack.url("CT_small.dcm", "/thumbnail"), headers=auth)
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "access-control-allow-origin" not in response.headers


def _preflight_headers(origin: str) -> Headers:
    return Headers({"origin": origin, "access-control-request-method": "GET"})


def test_configured_origins() -> None:
    """A configured list answers the matching origin only, with Vary: Origin."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("preflights never reach the application")

    cors = DicomwebCors(app, ["https://viewer.example.org/"])
    assert cors.allow_origin(VIEWER) == VIEWER
    assert cors.allow_origin("https://evil.example") is None
    good = cors.preflight(VIEWER, _preflight_headers(VIEWER))
    assert good.status_code == 204
    assert good.headers["access-control-allow-origin"] == VIEWER
    assert good.headers["vary"] == "Origin"
    assert (
        cors.preflight("https://evil.example", _preflight_headers("https://evil.example")).status_code == 403
    )
