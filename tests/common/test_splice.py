"""Spliced bodies (common/splice.py): a socket's bytes passed to the client by the kernel, in
HTTP/1.1 chunks (RFC 9112 §7.1), against uvicorn serving with the services' protocol on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tests.threaded_app import ThreadedApp

from imagebridge.apps.stack import free_port
from imagebridge.common import splice
from imagebridge.common.server import ConnectionProtocol
from imagebridge.common.splice import TRANSPORT, SplicedResponse, SpliceSource, usable_transport

PAYLOAD = bytes(range(251)) * 20_000  # 5 MB: several 1 MiB pieces, not a multiple of them
HEAD = b"already read: "


@dataclass
class RawSource:
    """A TCP server sending :data:`PAYLOAD` to each connection, then closing it or, with
    ``stall``, holding it open without sending until the test ends."""

    stall: bool = False
    sock: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def _serve(self) -> None:
        while not self.ended.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._send, args=(conn, self.stall), daemon=True).start()

    def _send(self, conn: socket.socket, stall: bool) -> None:
        with conn, contextlib.suppress(OSError):  # the reader may go away before the end
            for start in range(0, len(PAYLOAD), 65536):
                conn.sendall(PAYLOAD[start : start + 65536])
            if stall:
                self.ended.wait(30)

    def close(self) -> None:
        self.ended.set()
        self.sock.close()


class Socketed:
    """The source of a response: an open connection to a :class:`RawSource`."""

    def __init__(self, sock: socket.socket, remaining: int | None, wait: float) -> None:
        self.sock = sock
        self.remaining = remaining
        self.wait = wait

    def detach(self) -> SpliceSource:
        remaining = None if self.remaining is None else self.remaining - len(HEAD)
        return SpliceSource([HEAD], self.sock.fileno(), remaining, self.wait)

    async def body(self) -> AsyncIterator[bytes]:
        """The same body read through Python (the fallback)."""
        yield HEAD
        loop = asyncio.get_running_loop()
        left = None if self.remaining is None else self.remaining - len(HEAD)
        while left is None or left > 0:
            data = await loop.sock_recv(self.sock, 1 << 20 if left is None else min(1 << 20, left))
            if not data:
                return
            left = None if left is None else left - len(data)
            yield data


def _app(source: RawSource, sent: list[int]) -> Starlette:
    async def relay(request: Request) -> Response:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", source.port))
        length = request.query_params.get("length")
        origin = Socketed(sock, int(length) if length else None, float(request.query_params.get("wait", "5")))

        def done() -> None:
            sent.append(response.sent)
            sock.close()

        headers = {"content-type": "application/octet-stream"}
        if length and "announced" in request.query_params:  # the PACS's Content-Length, passed on
            headers["content-length"] = length
        response = SplicedResponse(origin.body(), origin, 200, headers)
        response.background = BackgroundTask(done)
        return response

    return Starlette(routes=[Route("/body", relay, methods=["GET"])])


@pytest.fixture(params=["uvloop", "asyncio"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, RawSource, list[int]]]:
    """The app under uvicorn on each event loop it may run on (``auto`` picks uvloop when it is
    installed, as here; the transports differ: ``get_extra_info("socket")``, write buffers)."""
    source = RawSource()
    sent: list[int] = []
    server = ThreadedApp(_app(source, sent), free_port(), http=ConnectionProtocol, loop=request.param)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/body", source, sent
    finally:
        server.stop()
        source.close()


def _settled(sent: list[int], count: int = 1) -> list[int]:
    deadline = time.monotonic() + 10
    while len(sent) < count:
        assert time.monotonic() < deadline, "the response never finished"
        time.sleep(0.02)
    return sent


def test_a_body_until_the_source_closes_is_spliced_byte_for_byte(
    served: tuple[str, RawSource, list[int]],
) -> None:
    url, _, sent = served
    with httpx.Client(timeout=30) as http:
        answer = http.get(url)
        again = http.get(url)  # the same connection serves the next request
    assert answer.status_code == 200
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == again.content == HEAD + PAYLOAD
    assert _settled(sent, 2) == [len(HEAD + PAYLOAD)] * 2  # spliced: counted by the response


def test_a_sized_body_ends_at_its_length(served: tuple[str, RawSource, list[int]]) -> None:
    url, _, sent = served
    length = 3_000_001
    with httpx.Client(timeout=30) as http:
        answer = http.get(url, params={"length": length})
    assert answer.content == (HEAD + PAYLOAD)[:length]
    assert _settled(sent) == [length]


def test_a_sized_body_announced_by_its_content_length_goes_out_chunked(
    served: tuple[str, RawSource, list[int]],
) -> None:
    """The proxy passes the PACS's Content-Length on; spliced, the body is chunked instead."""
    url, _, sent = served
    length = 3_000_001
    with httpx.Client(timeout=30) as http:
        answer = http.get(url, params={"length": length, "announced": ""})
        again = http.get(url, params={"length": length, "announced": ""})
    assert "content-length" not in answer.headers
    assert answer.headers["transfer-encoding"] == "chunked"
    assert answer.content == again.content == (HEAD + PAYLOAD)[:length]
    assert _settled(sent, 2) == [length] * 2
    # an HTTP/1.0 client reads no chunks: its body goes through Python with the length
    host, _, target = url.removeprefix("http://").partition("/")
    with socket.create_connection(tuple(host.split(":"))) as raw:  # type: ignore[arg-type]
        raw.sendall(f"GET /{target}?length={length}&announced HTTP/1.0\r\n\r\n".encode())
        received = b"".join(iter(lambda: raw.recv(1 << 20), b""))
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"content-length: %d" % length in head.lower()
    assert body == (HEAD + PAYLOAD)[:length]
    assert _settled(sent, 3)[2] == 0


def test_a_sized_body_cut_short_by_its_source_is_not_ended(served: tuple[str, RawSource, list[int]]) -> None:
    """A source closing before its Content-Length: the client must not get a complete body."""
    url, _, sent = served
    with httpx.Client(timeout=30) as http, pytest.raises(httpx.RemoteProtocolError):
        http.get(url, params={"length": len(HEAD + PAYLOAD) + 1000, "announced": ""})
    assert _settled(sent) == [len(HEAD + PAYLOAD)]


def test_head_and_servers_without_the_connection_go_through_python(
    served: tuple[str, RawSource, list[int]],
) -> None:
    url, source, sent = served
    plain_sent: list[int] = []
    plain = ThreadedApp(_app(source, plain_sent), free_port())
    plain.start()
    try:
        with httpx.Client(timeout=30) as http:
            head = http.head(url)
            streamed = http.get(f"http://127.0.0.1:{plain.port}/body")
    finally:
        plain.stop()
    assert head.status_code == 200
    assert head.content == b""
    assert streamed.content == HEAD + PAYLOAD
    assert _settled(sent) == [0]  # nothing spliced
    assert _settled(plain_sent) == [0]
    assert usable_transport({"type": "http", "method": "GET"}) is None


def test_a_source_that_stops_sending_ends_the_body_after_its_wait(
    served: tuple[str, RawSource, list[int]],
) -> None:
    url, source, sent = served
    source.stall = True
    with httpx.Client(timeout=30) as http:
        answer = http.get(url, params={"wait": "0.5"})
    assert answer.status_code == 200
    assert answer.content == HEAD + PAYLOAD  # what arrived, in a well-formed chunked body
    assert _settled(sent) == [len(HEAD + PAYLOAD)]


def test_a_client_gone_mid_body_stops_the_pump(served: tuple[str, RawSource, list[int]]) -> None:
    url, source, sent = served
    source.stall = True  # the source never ends: only the client's going can stop the pump
    with httpx.Client(timeout=30) as http:
        with http.stream("GET", url, params={"wait": "60"}) as answer:
            first = next(answer.iter_raw(65536))
        assert first
    # within seconds, not the source's 60 s wait: the hangup is seen while waiting for the source
    assert _settled(sent)[0] <= len(HEAD + PAYLOAD)
    with httpx.Client(timeout=30) as http:
        source.stall = False
        assert http.get(url).content == HEAD + PAYLOAD  # the server serves on


@contextlib.contextmanager
def _no_server_error(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Asserts that uvicorn logged no error (an exception in the application) meanwhile."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # configured by uvicorn: not propagated
    uvicorn_log.addHandler(caplog.handler)
    try:
        yield
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def _head_held_until_the_client_is_gone(app: ASGIApp, held: threading.Event) -> ASGIApp:
    """``app`` whose response head, once ``held`` is set, waits until the client's socket is closed
    (as a head waits for its audit record to be made durable, common/audit_journal.py)."""

    async def holding(scope: Scope, receive: Receive, send: Send) -> None:
        async def later(message: Message) -> None:
            if message["type"] == "http.response.start":
                held.set()
                transport = scope["extensions"][TRANSPORT]["transport"]
                for _ in range(1000):
                    if transport.get_extra_info("socket").fileno() == -1:
                        break
                    await asyncio.sleep(0.01)
            await send(message)

        await app(scope, receive, later)

    return holding


def test_a_client_gone_before_the_head_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    source, held = RawSource(), threading.Event()
    sent: list[int] = []
    app = _head_held_until_the_client_is_gone(_app(source, sent), held)
    server = ThreadedApp(app, free_port(), http=ConnectionProtocol)
    server.start()
    with _no_server_error(caplog):  # until the server has stopped: its log follows the response's end
        try:
            with socket.create_connection(("127.0.0.1", server.port)) as raw:
                raw.sendall(b"GET /body HTTP/1.1\r\nhost: x\r\n\r\n")
                assert held.wait(10)
            assert _settled(sent) == [0]
        finally:
            server.stop()
            source.close()


def _heads_in_turn(app: ASGIApp, second_checked: threading.Event) -> ASGIApp:
    """``app`` where the head of ``?turn=first`` waits until ``?turn=second`` has decided how to
    send its body, and the head of the second until the first holds the one pump there is."""

    async def in_turn(scope: Scope, receive: Receive, send: Send) -> None:
        async def later(message: Message) -> None:
            if message["type"] == "http.response.start":
                first = b"turn=first" in scope["query_string"]
                if not first:
                    second_checked.set()
                for _ in range(1000):
                    if second_checked.is_set() if first else not splice._PUMPS.available_tokens:
                        break
                    await asyncio.sleep(0.01)
            await send(message)

        await app(scope, receive, later)

    return in_turn


def test_a_body_admitted_while_a_pump_was_free_never_waits_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """With one pump: the first retrieval, stalled, holds it; the second, whose body was about
    to be spliced when the first took it, still comes (through Python), not after the first."""
    monkeypatch.setattr(splice, "_PUMPS", anyio.CapacityLimiter(1))
    source, second_checked = RawSource(stall=True), threading.Event()
    sent: list[int] = []
    server = ThreadedApp(
        _heads_in_turn(_app(source, sent), second_checked), free_port(), http=ConnectionProtocol
    )
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as first:
            first.sendall(b"GET /body?turn=first&wait=60 HTTP/1.1\r\nhost: x\r\n\r\n")
            whole = len(HEAD + PAYLOAD)
            with httpx.Client(timeout=30) as http:
                second = http.get(
                    f"http://127.0.0.1:{server.port}/body", params={"turn": "second", "length": whole}
                )
            assert second.content == HEAD + PAYLOAD
            assert _settled(sent) == [0]  # through Python, while the first is still being spliced
    finally:
        server.stop()
        source.close()


def test_a_client_connection_timing_out_mid_body_is_a_client_gone(
    served: tuple[str, RawSource, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A write to the client failing as a dead TCP connection does (ETIMEDOUT: retransmissions
    or keepalives unanswered) ends the response like a hangup, with the bytes sent counted."""
    url, _, sent = served
    real = os.splice
    clients: list[int] = []

    def splice_until_timeout(src: int, dst: int, count: int, *args: object, **kwargs: object) -> int:
        if dst in clients:  # the client's connection died after its first piece
            raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
        moved = real(src, dst, count, *args, **kwargs)  # type: ignore[arg-type]
        if not stat.S_ISFIFO(os.fstat(dst).st_mode):
            clients.append(dst)
        return moved

    monkeypatch.setattr(os, "splice", splice_until_timeout)
    with _no_server_error(caplog), httpx.Client(timeout=30) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(url)
        assert _settled(sent)[0] > len(HEAD)


def test_what_the_source_has_at_hand_goes_out_as_one_chunk() -> None:
    """_gather takes what has arrived without waiting, up to the room given: one chunk for
    several reads' worth (fewer chunks for the client to parse), none when nothing is there."""
    source, peer = socket.socketpair()
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        source.setblocking(False)
        assert splice._gather(source.fileno(), write, 1 << 20) == 0  # nothing at hand: no wait
        for _ in range(3):
            peer.sendall(bytes(10_000))
        assert splice._gather(source.fileno(), write, 25_000) == 25_000
        assert splice._gather(source.fileno(), write, 1 << 20) == 5_000
        assert len(os.read(read, 1 << 20)) == 30_000
        peer.close()
        assert splice._gather(source.fileno(), write, 1 << 20) == 0  # ended: found by the next read
    finally:
        for fd in (read, write):
            os.close(fd)
        source.close()
