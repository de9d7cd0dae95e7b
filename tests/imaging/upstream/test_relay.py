"""The relay's HTTP/1.1 reading (upstream/relay.py, RFC 9112) against a raw server on loopback
that answers with exactly the bytes each test gives, written in small pieces."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest

from imagebridge.common.settings import ImagingSettings
from imagebridge.imaging.upstream import relay
from imagebridge.imaging.upstream.client import UpstreamClient
from imagebridge.imaging.upstream.relay import RelayError

BODY = bytes(range(256)) * 9000  # 2.3 MB: several of the relay's 1 MiB pieces


async def _serve(answer: bytes, piece: int, seen: list[bytes]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            for start in range(0, len(answer), piece):
                writer.write(answer[start : start + piece])
                await writer.drain()
        except ConnectionError:
            pass  # the relay gave up first
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _exchange(
    answer: bytes, piece: int = 7001, wait: float = 5.0
) -> tuple[int, dict[str, str], bytes, bytes]:
    """(status, header fields, body, the request the server saw) of one GET through the relay."""

    async def run() -> tuple[int, dict[str, str], bytes, bytes]:
        seen: list[bytes] = []
        server = await _serve(answer, piece, seen)
        port = server.sockets[0].getsockname()[1]
        try:
            response = await relay.get(
                f"http://127.0.0.1:{port}/dicom-web/studies/1.2?a=b",
                {"Accept": "multipart/related", "Authorization": "Basic eA=="},
                wait=wait,
                tls=None,
            )
            try:
                body = b"".join([piece async for piece in response.body()])
            finally:
                await response.aclose()
            return response.status_code, dict(response.headers), body, seen[0]
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def _chunked(body: bytes, size: int, trailer: bytes = b"") -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("piece", [1, 4096, 1 << 20])
def test_a_chunked_body_with_a_trailer_is_decoded(piece: int) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: multipart/related\r\n\r\n"
    body = BODY[:50_000] if piece == 1 else BODY
    status, headers, got, request = _exchange(head + _chunked(body, 8192, b"X-Sum: 1\r\n"), piece)
    assert (status, headers["content-type"], got) == (200, "multipart/related", body)
    assert request.startswith(b"GET /dicom-web/studies/1.2?a=b HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"authorization: Basic eA==\r\n" in request
    assert b"connection: close\r\n" in request


def test_a_sized_body_stops_at_its_length_and_a_close_delimited_one_at_the_close() -> None:
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sTRAILING GARBAGE" % (len(BODY), BODY)
    assert _exchange(sized)[2] == BODY
    assert _exchange(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + BODY)[2] == BODY


def _detached(answer: bytes) -> tuple[bool, bytes]:
    """Whether the body of ``answer`` could be detached for splicing, and the body it gives:
    the bytes already received, then the rest read off the socket itself (common/splice.py)."""

    async def run() -> tuple[bool, bytes]:
        server = await _serve(answer, 7001, [])
        port = server.sockets[0].getsockname()[1]
        try:
            response = await relay.get(f"http://127.0.0.1:{port}/s", {}, wait=5.0, tls=None)
            try:
                source = response.detach()
                if source is None:
                    return False, b"".join([piece async for piece in response.body()])
                body = bytearray(b"".join(source.received))
                remaining = source.remaining
                while remaining is None or remaining > 0:
                    try:
                        data = os.read(source.fd, 1 << 20 if remaining is None else remaining)
                    except BlockingIOError:
                        await asyncio.sleep(0.001)
                        continue
                    if not data:
                        break
                    body += data
                    remaining = None if remaining is None else remaining - len(data)
                return True, bytes(body)
            finally:
                await response.aclose()
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


def test_a_close_delimited_or_sized_body_is_detached_for_splicing_at_its_length() -> None:
    assert _detached(b"HTTP/1.1 200 OK\r\n\r\n" + BODY) == (True, BODY)
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%sTRAILING GARBAGE" % (len(BODY), BODY)
    assert _detached(sized) == (True, BODY)


def test_a_chunked_body_or_an_invalid_length_is_not_detached() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + _chunked(BODY, 8192)
    assert _detached(chunked) == (False, BODY)
    with pytest.raises(RelayError, match="invalid Content-Length"):  # read here, where it fails
        _detached(b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\nabc")


def test_an_interim_answer_is_skipped_and_a_folded_field_unfolded() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nno"
    )
    status, headers, body, _ = _exchange(answer)
    assert (status, headers["x-a"], body) == (404, "one two", b"no")


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "before the end of the body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort", "inside a chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab", "malformed chunk"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "did not answer HTTP/1.x"),
        (b"HTTP/1.1 200 OK\r\nBad Field\r\n\r\n", "malformed header field"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n", "oversized response head"),
        (b"HTTP/1.1 200 OK\r\n", "inside the response head"),
    ],
)
def test_a_broken_or_foreign_answer_is_a_relay_error(answer: bytes, message: str) -> None:
    with pytest.raises(RelayError, match=message):
        _exchange(answer)


def _unanswered(action: Callable[[int], Awaitable[object]]) -> None:
    """Run ``action(port)`` against a server that accepts and then says nothing."""

    async def run() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(5)
            finally:
                writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        try:
            await action(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_a_silent_upstream_is_a_timeout_and_a_closed_port_unreachable() -> None:
    with pytest.raises(RelayError, match="stopped sending"):
        _unanswered(lambda port: relay.get(f"http://127.0.0.1:{port}/x", {}, wait=0.3, tls=None))

    async def refused() -> None:
        async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(nothing, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        await relay.get(f"http://127.0.0.1:{port}/x", {}, wait=1.0, tls=None)

    with pytest.raises(RelayError, match="unreachable"):
        asyncio.run(refused())


@pytest.mark.parametrize(
    ("url", "headers"),
    [("http://127.0.0.1:9/a b", {}), ("http://127.0.0.1:9/x", {"accept": "a\r\nX-Injected: 1"})],
)
def test_a_request_that_would_not_be_one_line_per_field_is_never_sent(
    url: str, headers: dict[str, str]
) -> None:
    with pytest.raises(RelayError, match="unsafe characters"):
        asyncio.run(relay.get(url, headers, wait=1.0, tls=None))


@pytest.mark.parametrize(
    ("env", "direct"),
    [
        ({}, True),
        ({"HTTP_PROXY": "http://proxy.example:3128"}, False),
        ({"ALL_PROXY": "http://proxy.example:3128"}, False),
        ({"HTTPS_PROXY": "http://proxy.example:3128"}, True),  # the PACS is plain http
        ({"HTTP_PROXY": "http://proxy.example:3128", "NO_PROXY": "pacs"}, True),
    ],
)
def test_whole_retrievals_go_direct_unless_an_environment_proxy_applies(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], direct: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    client = UpstreamClient(ImagingSettings(upstream_url="http://pacs:8042/dicom-web"))
    assert client.direct is direct
