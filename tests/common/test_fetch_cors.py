"""Origins as browsers serialize them, and the preflight answer (common/cors.py, Fetch §3.2)."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from imagebridge.common.cors import Rules, is_origin, origin_of, preflight

RULES = Rules(methods=("GET", "POST"), headers=("authorization", "content-type"), expose=("Location",))


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://app.example/cb", "https://app.example"),
        ("HTTPS://App.Example:443/cb?x=1#f", "https://app.example"),
        ("http://app.example:80/", "http://app.example"),
        ("http://app.example:443/", "http://app.example:443"),
        ("https://app.example:8443", "https://app.example:8443"),
        ("http://127.0.0.1:5173/callback", "http://127.0.0.1:5173"),
        ("http://[::1]:8080/cb", "http://[::1]:8080"),
        ("https://user:pw@app.example/cb", "https://app.example"),
        ("https://bücher.example/cb", "https://xn--bcher-kva.example"),
        # IDNA 2003 maps ß to ss (another host); browsers (UTS 46) keep it: xn--fa-hia.example
        ("https://faß.example/cb", None),
        ("http://[0:0:0:0:0:0:0:1]:8080/cb", "http://[::1]:8080"),
        ("https://[2001:DB8:0::1]/cb", "https://[2001:db8::1]"),
        ("com.example.app:/oauth2redirect", None),
        ("urn:ietf:wg:oauth:2.0:oob", None),
        ("https:///cb", None),
        ("https://app.example:99999/cb", None),
        ("null", None),
    ],
)
def test_origin_of(url: str, origin: str | None) -> None:
    assert origin_of(url) == origin


def test_is_origin() -> None:
    assert is_origin("https://viewer.example.org")
    assert is_origin("https://viewer.example.org/")
    assert not is_origin("https://viewer.example.org/ohif")
    assert not is_origin("https://viewer.example.org#x")
    assert not is_origin("https://someone@viewer.example.org")


def _asked(method: str, headers: str = "") -> Headers:
    return Headers({"access-control-request-method": method, "access-control-request-headers": headers})


def test_preflight_grants_what_the_rules_allow() -> None:
    answer = preflight("https://app.example", RULES, _asked("POST", "Content-Type, Authorization"), vary=True)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert answer.headers["access-control-allow-methods"] == "GET, POST"
    assert answer.headers["access-control-allow-headers"] == "authorization, content-type"
    assert answer.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize(
    ("allowed", "asked"),
    [(None, _asked("GET")), ("https://app.example", _asked("DELETE")), ("*", _asked("GET", "x-api-key"))],
)
def test_preflight_refuses_without_a_grant(allowed: str | None, asked: Headers) -> None:
    answer = preflight(allowed, RULES, asked, vary=False)
    assert answer.status_code == 403
    assert "access-control-allow-origin" not in answer.headers
    assert "vary" not in answer.headers
