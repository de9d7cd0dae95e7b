"""One WADO-RS retrieval from the upstream PACS, read straight off its socket (docs/proxy.md).

A study, series or instance retrieval is hundreds of megabytes that proxy mode passes on
untouched. Read through the general HTTP client, each byte was copied five times on the way (its
64 KiB reads, its parser's buffer, the pieces it hands out) and every 64 KiB read cost a pass
through its timeout and parser machinery. Here the socket is read into 1 MiB buffers
(``BufferedProtocol``: no copy until a full or final piece is handed out), the HTTP/1.1 response
head is parsed once (RFC 9112 §2-5, at most :data:`MAX_HEAD` bytes), and the body is delimited
as RFC 9112 §6.3 says: chunked, ``Content-Length``, or the connection's close. The request goes
out on a connection of its own (``Connection: close``), with this system's credentials, the same
TLS settings as the general client, and the same timeout for connecting and for every wait.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import cast

import httpx

from imagebridge.common.splice import SpliceSource

PIECE = 1 << 20
"""Bytes read from the socket into one buffer before it is handed out as a piece."""
AHEAD = 4
"""Full pieces held before reading from the upstream pauses (TCP flow control then holds it)."""
MAX_HEAD = 65536
"""Largest response head (status line and header fields) accepted from the upstream."""


class RelayError(Exception):
    """The upstream could not be reached, answered something that is not HTTP/1.x, or broke off."""


class _Socket(asyncio.BufferedProtocol):
    """The upstream's bytes received into :data:`PIECE`-sized buffers, handed out as pieces."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._buffer = bytearray(PIECE)
        self._filled = 0
        self._pieces: deque[bytes] = deque()
        self._done = False
        self._error: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled == len(self._buffer):
            self._pieces.append(bytes(self._buffer))
            self._filled = 0
            if len(self._pieces) >= AHEAD and self.transport is not None:
                self.transport.pause_reading()
                self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._done = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def read(self) -> bytes:
        """The next piece (whatever has arrived, up to :data:`PIECE`); b"" once the upstream closed."""
        while not self._pieces and not self._filled and not self._done:
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self.wait):
                    await self._wakeup
            except TimeoutError as exc:
                raise RelayError("the upstream PACS stopped sending (timeout)") from exc
        if self._pieces:
            piece = self._pieces.popleft()
            if self._paused and len(self._pieces) < AHEAD and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            return piece
        if self._filled:
            piece = bytes(memoryview(self._buffer)[: self._filled])
            self._filled = 0
            return piece
        if self._error is not None:
            raise RelayError(f"the upstream PACS broke off: {self._error}") from self._error
        return b""

    def detach(self) -> tuple[list[bytes], int] | None:
        """Stop reading: the pieces received so far and the socket's descriptor, for its bytes to
        be read by someone else (None once the upstream closed: its socket may be gone)."""
        sock = None if self.transport is None else self.transport.get_extra_info("socket")
        if self._done or sock is None or self.transport is None:
            return None
        self.transport.pause_reading()
        self._paused = True
        pieces = list(self._pieces)
        self._pieces.clear()
        if self._filled:
            pieces.append(bytes(memoryview(self._buffer)[: self._filled]))
            self._filled = 0
        return pieces, sock.fileno()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _Bytes:
    """The socket's pieces, consumed from a position: slicing copies only what is taken."""

    def __init__(self, socket: _Socket) -> None:
        self._socket = socket
        self._data = b""
        self._pos = 0

    async def _fill(self) -> bool:
        """Whether unread bytes are at hand (False once the upstream closed)."""
        if self._pos < len(self._data):
            return True
        self._data, self._pos = await self._socket.read(), 0
        return bool(self._data)

    def rest(self) -> bytes:
        """The unread bytes of the piece at hand."""
        data, self._data, self._pos = self._data[self._pos :], b"", 0
        return data

    async def take(self, limit: int) -> bytes:
        """Up to ``limit`` of the next bytes (the rest of a piece is itself, not a copy); b"" at the end."""
        if not await self._fill():
            return b""
        data, pos = self._data, self._pos
        end = min(len(data), pos + limit)
        self._pos = end
        return data if pos == 0 and end == len(data) else data[pos:end]

    async def until(self, mark: bytes, limit: int, what: str) -> bytes:
        """Everything up to and including ``mark``, at most ``limit`` bytes of it."""
        if await self._fill():  # most often the mark is in the piece at hand: no copy but the result
            found = self._data.find(mark, self._pos, self._pos + limit)
            if found >= 0:
                start, self._pos = self._pos, found + len(mark)
                return self._data[start : self._pos]
        held = bytearray()
        while True:
            if not await self._fill():
                raise RelayError(f"the upstream PACS closed the connection inside the {what}")
            taken = self._data[self._pos : self._pos + limit + len(mark) - len(held)]
            held += taken
            self._pos += len(taken)
            found = held.find(mark, max(0, len(held) - len(taken) - len(mark) + 1))
            if found >= 0:
                end = found + len(mark)
                self._pos -= len(held) - end  # what follows the mark is read next
                return bytes(held[:end])
            if len(held) > limit:
                raise RelayError(f"the upstream PACS sent an oversized {what}")


@dataclass
class RelayedResponse:
    """The upstream's status and header fields; :meth:`body` streams the rest (close it!)."""

    status_code: int
    headers: httpx.Headers
    _bytes: _Bytes
    _socket: _Socket

    async def body(self) -> AsyncIterator[bytes]:
        """The body's bytes as RFC 9112 §6.3 delimits them; an upstream that closes early raises
        :class:`RelayError` (chunked or sized bodies) after what did arrive."""
        if self.status_code in (204, 304):
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            async for data in self._chunked():
                yield data
            return
        if "content-length" not in self.headers:  # delimited by the connection's close
            while data := await self._bytes.take(PIECE):
                yield data
            return
        remaining = _length(self.headers["content-length"])
        while remaining:
            data = await self._bytes.take(remaining)
            if not data:
                raise RelayError("the upstream PACS closed the connection before the end of the body")
            remaining -= len(data)
            yield data

    def detach(self) -> SpliceSource | None:
        """The rest of the body as a socket to splice from (:mod:`imagebridge.common.splice`),
        reading here stopped; None when it is read here (:meth:`body`): a chunked or TLS body,
        an invalid ``Content-Length`` (:meth:`body` ends it), or an upstream already closed."""
        transport = self._socket.transport
        if (
            self.status_code in (204, 304)
            or "chunked" in self.headers.get("transfer-encoding", "").lower()
            or not self.headers.get("content-length", "0").strip().isdigit()
            or transport is None
            or transport.get_extra_info("sslcontext") is not None
        ):
            return None
        detached = self._socket.detach()
        if detached is None:
            return None
        pieces, fd = detached
        received = [self._bytes.rest(), *pieces]
        remaining = None
        if "content-length" in self.headers:
            remaining = _length(self.headers["content-length"])
            for i, piece in enumerate(received):
                received[i] = piece[:remaining]
                remaining -= len(received[i])
        return SpliceSource(received, fd, remaining, self._socket.wait)

    async def _chunked(self) -> AsyncIterator[bytes]:
        """RFC 9112 §7.1: size line, data, CRLF, …, a zero size, trailer fields (dropped), CRLF."""
        while size := _chunk_size(await self._bytes.until(b"\r\n", 4096, "chunk size line")):
            while size > 0:
                data = await self._bytes.take(size)
                if not data:
                    raise RelayError("the upstream PACS closed the connection inside a chunk")
                size -= len(data)
                yield data
            end = await self._bytes.take(2)
            if len(end) == 1:  # the CRLF spans two pieces
                end += await self._bytes.take(1)
            if end != b"\r\n":
                raise RelayError("the upstream PACS sent a malformed chunk")
        while await self._bytes.until(b"\r\n", MAX_HEAD, "trailer section") != b"\r\n":
            pass

    async def aclose(self) -> None:
        self._socket.close()


def _length(value: str) -> int:
    if not value.strip().isdigit():
        raise RelayError("the upstream PACS sent an invalid Content-Length")
    return int(value)


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    try:
        return int(digits, 16)
    except ValueError as exc:
        raise RelayError("the upstream PACS sent a malformed chunk size") from exc


def _parse_head(head: bytes) -> tuple[int, httpx.Headers]:
    """Status code and header fields of an HTTP/1.x response head (RFC 9112 §4, §5)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise RelayError("the upstream PACS did not answer HTTP/1.x")
    fields: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and fields:  # obsolete line folding (RFC 9112 §5.2)
            fields[-1] = (fields[-1][0], f"{fields[-1][1]} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise RelayError("the upstream PACS sent a malformed header field")
        fields.append((name, value.strip()))
    return int(code), httpx.Headers(fields)


async def get(
    url: str, headers: Mapping[str, str], *, wait: float, tls: ssl.SSLContext | None
) -> RelayedResponse:
    """Send ``GET url`` with ``headers`` on a new connection and read the response head; ``wait``
    bounds the connection's setup and every wait for the upstream's bytes (seconds)."""
    target = urllib.parse.urlsplit(url)
    secure = target.scheme == "https"
    host = target.hostname or ""
    port = target.port or (443 if secure else 80)
    path = (target.path or "/") + (f"?{target.query}" if target.query else "")
    authority = target.netloc.rpartition("@")[2]
    fields = {"host": authority, **{k.lower(): v for k, v in headers.items()}, "connection": "close"}
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    if any(c in line for line in lines for c in "\r\n\0") or " " in path:
        raise RelayError("unsafe characters in the request to the upstream PACS")
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(wait):
            transport, socket = await loop.create_connection(
                lambda: _Socket(wait),
                host,
                port,
                ssl=(tls or ssl.create_default_context()) if secure else None,
                server_hostname=host if secure else None,
            )
    except (OSError, TimeoutError) as exc:
        raise RelayError(f"the upstream PACS is unreachable: {type(exc).__name__}") from exc
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    reader = _Bytes(socket)
    try:
        while True:
            status, answer = _parse_head(await reader.until(b"\r\n\r\n", MAX_HEAD, "response head"))
            if status >= 200:
                if "transfer-encoding" in answer and "content-length" in answer:
                    # RFC 9112 §6.1: a sender must not send both; reading either could desync
                    raise RelayError("the upstream PACS sent both Transfer-Encoding and Content-Length")
                return RelayedResponse(status, answer, reader, socket)
            # an interim 1xx answer (RFC 9110 §15.2): the final one follows
    except BaseException:
        socket.close()
        raise
