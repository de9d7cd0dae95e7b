"""A body passed from one socket to the client's connection by the kernel alone (Linux splice(2)).

Proxy mode relays studies of hundreds of megabytes untouched. Read into Python and written out
again, every byte is copied twice by the kernel and at least once more in between, on a machine
whose cores the PACS and the client also need. :class:`SplicedResponse` moves the body from the
upstream's socket through a pipe into the client's socket (``splice(2)``: the pages change hands,
no copy to user space), in HTTP/1.1 chunks (RFC 9112 §7.1) written around each piece.

It needs the client's connection, which the server's protocol puts in the ASGI scope under
:data:`TRANSPORT` (:mod:`imagebridge.common.server`), as plain TCP (no TLS), a GET (a HEAD has no
body) and a source that is a plain socket; otherwise, or when :data:`MAX_PUMPS` relays are
already spliced, the body goes through Python as any :class:`StreamingResponse` does. The
headers go out through the ASGI ``send`` (every middleware sees them, and the audit journal's
durability check still comes first), the end of the body too; in between, the pump writes to
the client's socket itself, in a worker thread of its own, once the server's write buffer is
empty. A source's ``Content-Length`` is not passed on (the chunks frame the body), nor is a
body chunked for an HTTP/1.0 client. A source that breaks off or stops sending for ``wait``
seconds ends the body where it is, as the streamed path does; one that ends before its length
leaves the response unended (the connection is closed, as the server does when a streamed body
falls short of its ``Content-Length``); a client gone stops the pump.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import anyio
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

TRANSPORT = "imagebridge.transport"
"""ASGI extension (``scope["extensions"]``) whose ``transport`` is the client's connection."""
PIECE = 1 << 20
"""Bytes moved through the pipe per chunk (the pipe is sized to it where the system allows)."""
MAX_PUMPS = 64
"""Relays spliced at once (each holds a worker thread); beyond, bodies go through Python."""
_PUMPS = anyio.CapacityLimiter(MAX_PUMPS)
"""A pump's place, taken before its body is detached (never waited for: none left, Python reads)."""
_THREADS = anyio.CapacityLimiter(MAX_PUMPS)
"""The pumps' worker threads (as many as places: never waited for either)."""
_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: A write to the client failing so: its connection is closed, reset or dead (unanswered
#: retransmissions or keepalives: ETIMEDOUT; ICMP errors: unreachable, down).
_CLIENT_GONE = (
    errno.EPIPE,
    errno.ECONNRESET,
    errno.ENOTCONN,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.ENETDOWN,
)
#: The client closed its side or the connection failed (not data: a pipelined request is no hangup).
_HANGUP = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR


@dataclass
class SpliceSource:
    """The rest of a body on a socket: bytes already read off it, then the socket itself."""

    received: list[bytes]
    """Body bytes the reader had already taken from the socket, in order."""
    fd: int
    """The socket (non-blocking, not owned: its reader closes it)."""
    remaining: int | None
    """Bytes still to come on the socket; None: until it closes."""
    wait: float
    """Longest wait for the socket's next bytes, in seconds."""


class Detachable(Protocol):
    """A body being read off a socket, which can hand the socket over."""

    def detach(self) -> SpliceSource | None:
        """Stop reading and hand over the rest (None: it cannot be spliced; read it as before)."""


def usable_transport(scope: Scope) -> asyncio.Transport | None:
    """The client connection, when a body may be written to its socket directly."""
    if scope.get("method") != "GET" or scope.get("http_version") != "1.1" or not hasattr(os, "splice"):
        return None  # an HTTP/1.0 client reads no chunks (RFC 9112 §7.1)
    transport: asyncio.Transport | None = scope.get("extensions", {}).get(TRANSPORT, {}).get("transport")
    if transport is None or transport.is_closing() or transport.get_extra_info("sslcontext") is not None:
        return None
    return transport


class SplicedResponse(StreamingResponse):
    """A streamed response whose body is spliced from :attr:`source` when the connection allows.

    ``content`` is the same body read through Python (the fallback, which sends what it reads as
    any streamed response does); :attr:`sent` counts the body bytes that went out spliced."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        source: Detachable,
        status_code: int,
        headers: Mapping[str, str] | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(content, status_code, headers, background=background)
        self.source = source
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = usable_transport(scope)
        place, detached = object(), None
        if transport is not None and _took(place):
            detached = self.source.detach()
            if detached is None:
                _PUMPS.release_on_behalf_of(place)
        if transport is None or detached is None:
            await super().__call__(scope, receive, send)
            return
        try:
            # the body goes out in chunks: a Content-Length (the source's) would frame it otherwise
            headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
            start = {"type": "http.response.start", "status": self.status_code, "headers": headers}
            await send(start)
            await _drained(transport, detached.wait)
            if transport.is_closing():  # the client went away meanwhile: its socket may be closed
                return
            pump = _Pump(detached, _socket_fd(transport))
            try:
                self.sent = await anyio.to_thread.run_sync(pump.run, abandon_on_cancel=True, limiter=_THREADS)
            finally:
                pump.stop()  # a cancelled request's pump ends at its next wait
            if self.sent < 0:  # the client is gone, or a sized body was cut short: it is not ended
                self.sent = -self.sent - 1
                transport.abort()
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            _PUMPS.release_on_behalf_of(place)
            await _close(self.body_iterator)
            if self.background is not None:
                await self.background()


def _took(place: object) -> bool:
    """Whether ``place`` got one of the :data:`MAX_PUMPS` pumps (at once, or not at all)."""
    try:
        _PUMPS.acquire_on_behalf_of_nowait(place)
    except anyio.WouldBlock:
        return False
    return True


async def _close(body: object) -> None:
    close = getattr(body, "aclose", None)
    if close is not None:
        await close()


def _socket_fd(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    fd: int = sock.fileno()
    return fd


async def _drained(transport: asyncio.Transport, wait: float) -> None:
    """Wait until the server has written everything it buffered (the head) to the socket."""
    with anyio.fail_after(wait):
        delay = 0.0
        while transport.get_write_buffer_size():
            await asyncio.sleep(delay)
            delay = min(0.01, delay * 2 or 0.0005)


def _ready(fd: int, event: int, wait: float, stop: threading.Event, client: int) -> bool:
    """Whether ``fd`` became ready for ``event`` within ``wait`` seconds (False when stopped);
    :class:`_ClientGone` when the client hangs up meanwhile."""
    poller = select.poll()
    poller.register(fd, event)
    if fd != client:
        poller.register(client, _HANGUP)
    waited = 0.0
    while not stop.is_set():
        for ready, events in poller.poll(250):
            if ready == client and events & _HANGUP:
                raise _ClientGone
            if ready == fd:
                return True
        waited += 0.25
        if waited >= wait:
            return False
    return False


class _ClientGone(Exception):
    pass


def _send(fd: int, count: int, step: Callable[[int], int], stop: threading.Event) -> None:
    """Call ``step(done)``, which sends some of ``count`` bytes to the client's socket ``fd`` and
    says how many, until all are sent, waiting while the socket's buffer is full;
    :class:`_ClientGone` once the client has gone."""
    done = 0
    while done < count:
        try:
            done += step(done)
        except BlockingIOError:
            if not _ready(fd, select.POLLOUT, float("inf"), stop, fd):
                raise _ClientGone from None
        except OSError as exc:
            if exc.errno in _CLIENT_GONE:
                raise _ClientGone from exc
            raise


def _write(fd: int, data: bytes, stop: threading.Event) -> None:
    view = memoryview(data)
    _send(fd, len(view), lambda done: os.write(fd, view[done:]), stop)


def _move(pipe: int, fd: int, count: int, stop: threading.Event) -> None:
    """Splice ``count`` bytes from ``pipe`` into the client's socket ``fd``."""
    _send(fd, count, lambda done: os.splice(pipe, fd, count - done, flags=_FLAGS), stop)


class _Pump:
    """One body's pump, with descriptors of its own for both sockets (duplicates: whatever the
    server closes meanwhile, they stay these sockets), closed when it ends or is stopped unrun."""

    def __init__(self, source: SpliceSource, client: int) -> None:
        self.source = source
        self.fds: tuple[int, int] | None = (os.dup(source.fd), os.dup(client))
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def _take(self) -> tuple[int, int] | None:
        with self._lock:
            fds, self.fds = self.fds, None
            return fds

    def run(self) -> int:
        """Write the body to the client as HTTP/1.1 chunks (in a worker thread): the bytes sent,
        or ``-1 - sent`` when the client went away or the source ended before its length."""
        fds = self._take()
        if fds is None:
            return 0
        try:
            return _chunks(self.source, *fds, self.stopped)
        finally:
            for fd in fds:
                os.close(fd)

    def stop(self) -> None:
        self.stopped.set()
        fds = self._take()  # still here: the pump never ran
        for fd in fds or ():
            os.close(fd)


def _gather(fd: int, pipe: int, room: int) -> int:
    """Splice into ``pipe`` what else the source has at hand, up to ``room`` bytes, without
    waiting: one chunk per what has arrived rather than per read (fewer chunks for the client to
    parse). A source that ended or broke off is found by the next read."""
    gathered = 0
    while gathered < room:
        try:
            got = os.splice(fd, pipe, room - gathered, flags=_FLAGS)
        except OSError:  # nothing more at hand (EAGAIN), or the pipe is full
            break
        if got == 0:
            break
        gathered += got
    return gathered


def _chunks(source: SpliceSource, fd: int, client: int, stop: threading.Event) -> int:
    """:meth:`_Pump.run` on ``fd`` (the source) and ``client``."""
    sent = 0
    crlf = b""
    try:
        for piece in source.received:
            if piece:
                _write(client, b"%s%x\r\n" % (crlf, len(piece)) + piece, stop)
                crlf = b"\r\n"
                sent += len(piece)
        read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            with contextlib.suppress(OSError):  # a smaller pipe only means smaller chunks
                fcntl.fcntl(write, _F_SETPIPE_SZ, PIECE)
            remaining = source.remaining
            while remaining is None or remaining > 0:
                want = PIECE if remaining is None else min(PIECE, remaining)
                try:
                    got = os.splice(fd, write, want, flags=_FLAGS)
                except BlockingIOError:
                    if not _ready(fd, select.POLLIN, source.wait, stop, client):
                        break  # stopped sending: the body ends here
                    continue
                except OSError:
                    break  # broke off: the body ends here
                if got == 0:
                    break
                got += _gather(fd, write, want - got)
                _write(client, b"%s%x\r\n" % (crlf, got), stop)
                _move(read, client, got, stop)
                crlf = b"\r\n"
                sent += got
                if remaining is not None:
                    remaining -= got
        finally:
            os.close(read)
            os.close(write)
        if crlf:
            _write(client, crlf, stop)
    except _ClientGone:
        return -1 - sent
    return sent if not remaining else -1 - sent
