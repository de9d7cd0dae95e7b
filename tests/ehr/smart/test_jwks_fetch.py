"""Tests for imagebridge.ehr.smart.jwks_fetch against a real HTTP server on 127.0.0.1 (AS-11, AS-28)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from joserfc.jwk import ECKey, RSAKey

from imagebridge.ehr.smart.jwks_fetch import MAX_KEYS, JwksError, JwksFetcher, key_set_from_jwks

pytestmark = pytest.mark.anyio

Route = Callable[[asyncio.StreamWriter], Awaitable[None]]
RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})
JWKS = json.dumps({"keys": [RSA.as_dict(private=False), EC.as_dict(private=False)]}).encode()


@dataclass
class Server:
    """A tiny HTTP/1.1 server with one behaviour per path, counting requests."""

    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1]
            host = next(
                (line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("host:")), ""
            )
            self.requests.append((path, host))
            await ROUTES.get(path, not_found)(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def respond(body: bytes, status: str = "200 OK", headers: tuple[str, ...] = ()) -> Route:
    async def send(writer: asyncio.StreamWriter) -> None:
        lines = [
            f"HTTP/1.1 {status}",
            f"Content-Length: {len(body)}",
            "Content-Type: application/json",
            *headers,
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await writer.drain()

    return send


async def huge_chunked(writer: asyncio.StreamWriter) -> None:
    """50 MB in chunked encoding, no Content-Length: the cap must apply to the stream."""
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
    chunk = b" " * 65536
    for _ in range(50 * 16):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


async def slow(writer: asyncio.StreamWriter) -> None:
    """Valid headers, then one byte every 0.2 s: only a total deadline stops it."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(0.2)


not_found = respond(b"{}", "404 Not Found")
ROUTES: dict[str, Route] = {
    "/jwks": respond(JWKS, headers=("Cache-Control: public, max-age=60",)),
    "/jwks-default": respond(JWKS),
    "/jwks-long": respond(JWKS, headers=("Cache-Control: max-age=86400",)),
    "/jwks-no-store": respond(JWKS, headers=("Cache-Control: no-store",)),
    "/jwks-bad-max-age": respond(JWKS, headers=("Cache-Control: max-age=soon",)),
    "/big-declared": respond(b" " * 70000),
    "/big": huge_chunked,
    "/slow": slow,
    "/redirect": respond(b"", "302 Found", ("Location: /jwks",)),
    "/redirect-metadata": respond(b"", "307 Temporary Redirect", ("Location: http://169.254.169.254/",)),
    "/not-json": respond(b"<html>hello</html>"),
    "/too-many": respond(json.dumps({"keys": [RSA.as_dict(private=False)] * (MAX_KEYS + 1)}).encode()),
    "/private": respond(json.dumps({"keys": [RSA.as_dict(private=True)]}).encode()),
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    listener = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield srv
        listener.close()
        # Handlers end when the client hangs up (broken pipe); wait for them so none is cancelled.
        if srv.handlers:
            await asyncio.wait(srv.handlers, timeout=10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fetcher(**kwargs: object) -> JwksFetcher:
    return JwksFetcher(allow_loopback_http=True, **kwargs)  # type: ignore[arg-type]


# --- fetching -------------------------------------------------------------------------------------


async def test_fetches_a_jwks(server: Server) -> None:
    keys = await fetcher().get(server.url("/jwks"))
    assert sorted(k.kid or "" for k in keys) == ["ec-1", "rsa-1"]


async def test_connects_to_checked_address_but_keeps_host(server: Server) -> None:
    await fetcher().get(server.url("/jwks", host="localhost"))
    assert server.requests == [("/jwks", f"localhost:{server.port}")]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/big-declared", "larger than"),
        ("/big", "larger than"),
        ("/redirect", "HTTP 302"),
        ("/redirect-metadata", "HTTP 307"),
        ("/missing", "HTTP 404"),
        ("/not-json", "not valid JSON"),
        ("/too-many", "between 1 and 20 keys"),
        ("/private", "private or symmetric"),
    ],
)
async def test_rejected_responses(server: Server, path: str, message: str) -> None:
    with pytest.raises(JwksError, match=message):
        await fetcher().get(server.url(path))
    assert [p for p, _ in server.requests] == [path]  # redirects are never followed


async def test_slow_body_hits_total_timeout(server: Server) -> None:
    with pytest.raises(JwksError, match="timed out"):
        await fetcher(timeout=0.5).get(server.url("/slow"))


async def test_connection_refused_is_a_jwks_error() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    with pytest.raises(JwksError, match="failed"):
        await fetcher().get(f"http://127.0.0.1:{port}/jwks")


# --- SSRF guards (AS-11) --------------------------------------------------------------------------


@pytest.mark.parametrize("allow_loopback_http", [False, True])
@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://[fe80::1]/jwks",
        "https://10.0.0.5/jwks",
        "https://192.168.1.10/jwks",
        "https://172.16.0.1/jwks",
        "https://100.64.0.1/jwks",
        "https://0.0.0.0/jwks",
        "https://[fc00::1]/jwks",
        "https://224.0.0.1/jwks",
        "ftp://example.org/jwks",
        "file:///etc/passwd",
        "https://user:pw@example.org/jwks",
        "/relative/jwks",
        "https://ex\x00.org/jwks",
        "https://xn--/jwks",
        "https://exa mple.org/jwks",
    ],
)
async def test_refuses_non_public_targets(url: str, allow_loopback_http: bool) -> None:
    with pytest.raises(JwksError):
        await JwksFetcher(allow_loopback_http=allow_loopback_http, timeout=1).get(url)


async def test_loopback_refused_unless_allowed(server: Server) -> None:
    strict = JwksFetcher()
    with pytest.raises(JwksError, match="https"):
        await strict.get(server.url("/jwks"))
    with pytest.raises(JwksError, match="non-public"):
        await strict.get(f"https://127.0.0.1:{server.port}/jwks")
    with pytest.raises(JwksError, match="non-public"):
        await strict.get(f"https://localhost:{server.port}/jwks")
    assert server.requests == []


async def test_every_resolved_address_is_checked(server: Server) -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "169.254.169.254"]

    with pytest.raises(JwksError, match="non-public"):
        await JwksFetcher(resolver=rebinding).get("https://attacker.example/jwks")


async def test_plain_http_to_public_address_refused_even_in_dev() -> None:
    async def public(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    with pytest.raises(JwksError, match="https"):
        await fetcher(resolver=public).get("http://example.org/jwks")


async def test_unresolvable_host() -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(JwksError, match="resolved"):
        await JwksFetcher(resolver=nxdomain).get("https://nowhere.example/jwks")


# --- caching (AS-28: never beyond Cache-Control) --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fresh_for"),
    [
        ("/jwks", 60),
        ("/jwks-default", 300),
        ("/jwks-long", 3600),
        ("/jwks-no-store", 0),
        ("/jwks-bad-max-age", 0),
    ],
)
async def test_cache_lifetime(server: Server, path: str, fresh_for: int) -> None:
    clock = Clock()
    jwks = fetcher(clock=clock)
    url = server.url(path)
    await jwks.get(url)
    if fresh_for:
        clock.now += fresh_for - 1
        await jwks.get(url)
        assert len(server.requests) == 1
    clock.now += 1
    await jwks.get(url)
    assert len(server.requests) == 2


async def test_invalidate(server: Server) -> None:
    jwks = fetcher()
    await jwks.get(server.url("/jwks"))
    jwks.invalidate(server.url("/jwks"))
    await jwks.get(server.url("/jwks"))
    assert len(server.requests) == 2


async def test_failures_are_not_cached(server: Server) -> None:
    jwks = fetcher()
    for _ in range(2):
        with pytest.raises(JwksError):
            await jwks.get(server.url("/not-json"))
    assert len(server.requests) == 2


# --- key_set_from_jwks ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"keys": {}},
        {"keys": []},
        {"keys": ["x"]},
        {"keys": [{"n": "abc"}]},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        {"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]},
        {"keys": [{"kty": "PQC", "pub": "x"}]},
    ],
)
def test_key_set_from_jwks_rejects(document: object) -> None:
    with pytest.raises(JwksError):
        key_set_from_jwks(document)


def test_key_set_from_jwks_ignores_unknown_key_types() -> None:
    keys = key_set_from_jwks({"keys": [{"kty": "PQC", "pub": "x"}, EC.as_dict(private=False)]})
    assert [k.kid for k in keys] == ["ec-1"]
