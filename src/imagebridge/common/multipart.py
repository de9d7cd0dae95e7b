"""RFC 2046 §5.1 ``multipart/related`` (RFC 2387) bodies: a streaming parser and a writer.

PS3.18 §8.6.1.2 carries every multi-instance DICOMweb payload (STOW-RS requests, WADO-RS
responses) as ``multipart/related``. One parser, :class:`RelatedParser` (push, no I/O), serves
the imaging system's STOW-RS (:func:`iter_parts`, async, part bodies streamed) and clients
reading WADO-RS responses (:func:`iter_related`, sync). It never holds more than one chunk plus
a boundary's worth of overlap (or one bounded header block), so a 2 GB instance can be spooled to
disk and a hostile body (security.md DI-13) costs linear time and bounded memory. It uses
``find`` only: no regular expression sees the body.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message

MAX_BOUNDARY_LENGTH = 70
"""RFC 2046 §5.1.1: a boundary is 1 to 70 characters."""

MAX_TRANSPORT_PADDING = 1024
"""Longest run of spaces/tabs accepted after a boundary (RFC 2046 §5.1.1 ``transport-padding``)."""

_CRLF = b"\r\n"
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class MultipartError(ValueError):
    """The body (or its boundary) is not acceptable ``multipart/related``: answer 400."""


class PartTooLarge(MultipartError):
    """One part exceeds the per-part size limit: answer 413 (PS3.18 §10.5.3)."""


def validate_boundary(boundary: str) -> str:
    """Return ``boundary`` if usable (RFC 2046 §5.1.1), else raise :class:`MultipartError`.

    The length rule (1-70) is enforced exactly. Characters are accepted more liberally than the
    ``bchars`` grammar (any printable ASCII, no trailing space) because real clients stray from it
    and the parser's cost does not depend on the characters.
    """
    if not boundary:
        raise MultipartError("multipart boundary is missing or empty")
    if len(boundary) > MAX_BOUNDARY_LENGTH:
        raise MultipartError(
            f"multipart boundary is {len(boundary)} characters, more than {MAX_BOUNDARY_LENGTH} (RFC 2046)"
        )
    if boundary.endswith(" ") or not all(" " <= c <= "~" for c in boundary):
        raise MultipartError("multipart boundary must be printable ASCII and must not end with a space")
    return boundary


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """A part begins: its header fields (names lower-cased, repeated fields joined with ", ")."""

    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """A piece of the current part's body."""

    data: bytes


class PartEnd:
    """The current part's body is complete."""


class BodyEnd:
    """The close delimiter: no part follows (the epilogue is never looked at)."""


Event = PartHeaders | PartData | PartEnd | BodyEnd | MultipartError
_PART_END, _BODY_END = PartEnd(), BodyEnd()


class RelatedParser:
    """A push parser of ``multipart/related`` bodies (RFC 2046 §5.1.1, RFC 2387): no I/O.

    :meth:`feed` takes the next bytes and returns the events they complete, in order; an error is
    returned as the last event (a :class:`MultipartError`), after everything before it, so that a
    consumer acts on complete parts before failing. :meth:`close` says the body ended. The buffer
    holds at most what one ``feed`` brought plus a boundary's worth of overlap (or one bounded
    header block); every search is a ``find``: no regular expression sees the body. Body bytes
    of a chunk with no delimiter in it are handed out as they came, not copied.
    """

    def __init__(
        self,
        boundary: bytes,
        *,
        max_part_bytes: int,
        max_header_bytes: int = 16384,
        max_parts: int = 10000,
    ) -> None:
        validate_boundary(boundary.decode("latin-1"))
        self._delimiter = _CRLF + b"--" + boundary
        # A virtual CRLF lets a dash-boundary at the very start match like every other delimiter.
        self._buf = bytearray(_CRLF)
        self._max_part_bytes = max_part_bytes
        self._max_header_bytes = max_header_bytes
        self._max_parts = max_parts
        self._state = "preamble"  # then "headers", "body"; "done" after the close delimiter or an error
        self._part_bytes = 0
        self._header_search = 0
        self.part_count = 0

    def feed(self, data: bytes) -> list[Event]:
        """Add ``data``; return the events it completes."""
        if self._state == "done":
            return []
        events: list[Event] = []
        try:
            if self._state == "body" and not self._buf:
                data = self._body_direct(data, events)
            self._buf += data
            while self._step(events):
                pass
        except MultipartError as exc:
            self._state = "done"
            events.append(exc)
        return events

    def close(self) -> list[Event]:
        """The body ended: a :class:`MultipartError` event unless the close delimiter was seen."""
        state, self._state = self._state, "done"
        if state == "done":
            return []
        if state in ("preamble", "body") and self._buf.startswith(self._delimiter):
            message = "multipart body ends inside a boundary (no closing delimiter)"
        else:
            message = {
                "preamble": "multipart body has no boundary delimiter (wrong or missing boundary?)",
                "headers": "multipart body ends inside part headers (no closing delimiter)",
                "body": "multipart body ends inside a part (no closing delimiter)",
            }[state]
        return [MultipartError(message)]

    def _step(self, events: list[Event]) -> bool:
        """Advance as far as the buffer allows; True when called again may progress further."""
        if self._state == "preamble":
            return self._preamble(events)
        if self._state == "headers":
            return self._headers(events)
        if self._state == "body":
            return self._body(events)
        return False

    def _preamble(self, events: list[Event]) -> bool:
        """Discard everything before the first delimiter (RFC 2046 §5.1.1 preamble)."""
        found = self._buf.find(self._delimiter)
        if found < 0:
            del self._buf[: max(0, len(self._buf) - len(self._delimiter) + 1)]
            return False
        del self._buf[:found]
        follows = self._after_delimiter()
        if follows is None:
            del self._buf[:1]
            return True
        if follows == "more":
            return False
        return self._next_part(events, follows is True)

    def _after_delimiter(self) -> bool | str | None:
        """Classify the delimiter at the start of the buffer and consume it.

        True when a part follows (``--boundary`` + padding + CRLF), False for the close delimiter
        (``--boundary--``), None when the bytes are not a delimiter after all, ``"more"`` when more
        bytes are needed to tell.
        """
        n = len(self._delimiter)
        buf = self._buf
        if buf[n : n + 2] == b"--":
            del buf[: n + 2]
            return False
        end = n
        while end < len(buf) and buf[end] in b" \t":
            end += 1
        if end - n > MAX_TRANSPORT_PADDING:
            raise MultipartError("too much whitespace after a multipart boundary")
        rest = bytes(buf[end : end + 2])
        if rest == _CRLF:
            del buf[: end + 2]
            return True
        if rest not in (b"", b"\r") and not (end == n and rest == b"-"):
            return None
        return "more"

    def _next_part(self, events: list[Event], follows: bool) -> bool:
        if not follows:
            self._state = "done"
            events.append(_BODY_END)
            return False
        if self.part_count >= self._max_parts:
            raise MultipartError(f"multipart body has more than {self._max_parts} parts")
        self.part_count += 1
        self._part_bytes = 0
        self._header_search = 0
        self._state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        """One part's header block, up to and including the empty line (RFC 2046 §5.1.1)."""
        if self._buf.startswith(_CRLF):
            del self._buf[:2]
            events.append(PartHeaders({}))
            self._state = "body"
            return True
        end = self._buf.find(b"\r\n\r\n", self._header_search)
        if end > self._max_header_bytes or (end < 0 and len(self._buf) > self._max_header_bytes + 3):
            raise MultipartError(f"multipart part headers exceed {self._max_header_bytes} bytes")
        if end < 0:
            self._header_search = max(0, len(self._buf) - 3)
            return False
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        events.append(PartHeaders(_parse_headers(block)))
        self._state = "body"
        return True

    def _body(self, events: list[Event]) -> bool:
        """Body bytes up to the next delimiter; keep only what could start a delimiter."""
        start = 0
        while True:
            found = self._buf.find(self._delimiter, start)
            if found == 0:
                follows = self._after_delimiter()
                if follows == "more":
                    return False
                if follows is not None:
                    events.append(_PART_END)
                    return self._next_part(events, follows is True)
                start = 1  # "--boundary" followed by other bytes is body data
                continue
            if found > 0:
                events.append(self._take(found))
                return True
            safe = len(self._buf) - self._partial(self._buf)
            if safe > 0:
                events.append(self._take(safe))
            return False

    def _body_direct(self, data: bytes, events: list[Event]) -> bytes:
        """Body bytes of ``data`` (the buffer being empty) handed out as they are, without
        copying them through the buffer, up to a delimiter or what could start one; the rest
        of ``data`` is returned for the buffer."""
        found = data.find(self._delimiter)
        end = found if found >= 0 else len(data) - self._partial(data)
        if end == 0:
            return data
        events.append(self._count(data if end == len(data) else data[:end]))
        return data[end:]

    def _partial(self, data: bytes | bytearray) -> int:
        """How many bytes at the end of ``data`` could be the start of a delimiter (it begins
        with CR, so only a CR in the last ``len(delimiter) - 1`` bytes can start one)."""
        at = data.find(b"\r", max(0, len(data) - len(self._delimiter) + 1))
        while at >= 0:
            if self._delimiter.startswith(data[at:]):
                return len(data) - at
            at = data.find(b"\r", at + 1)
        return 0

    def _take(self, size: int) -> PartData:
        with memoryview(self._buf) as view, view[:size] as piece:
            chunk = bytes(piece)
        del self._buf[:size]
        return self._count(chunk)

    def _count(self, chunk: bytes) -> PartData:
        self._part_bytes += len(chunk)
        if self._part_bytes > self._max_part_bytes:
            raise PartTooLarge(f"a multipart part is larger than {self._max_part_bytes} bytes")
        return PartData(chunk)


def _parse_headers(block: bytes) -> dict[str, str]:
    """Parse ``name: value`` lines (RFC 2045 §3 / RFC 5322 §2.2, folded lines unfolded)."""
    headers: dict[str, str] = {}
    name = ""
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and name:
            headers[name] = f"{headers[name]} {line.strip()}".strip()
            continue
        field, colon, value = line.partition(":")
        name = field.strip().lower()
        if not colon or not name:
            raise MultipartError(f"malformed multipart part header line {line[:80]!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


class Part:
    """One body part: its header fields and a once-only async iterator over its body.

    The body must be consumed (or abandoned) before the next part is requested; abandoned bytes
    are discarded.
    """

    def __init__(self, headers: Mapping[str, str], stream: _EventStream) -> None:
        self.headers = headers
        self.body: AsyncIterator[bytes] = _Body(stream, stream.current)

    @property
    def content_type(self) -> str | None:
        """The part's ``Content-Type`` field, if any."""
        return self.headers.get("content-type")

    async def read(self) -> bytes:
        """Return the whole remaining body (bounded by ``max_part_bytes``)."""
        return b"".join([chunk async for chunk in self.body])


class _EventStream:
    """The parser's events, pulling chunks from the source only when none are pending."""

    def __init__(self, chunks: AsyncIterator[bytes], parser: RelatedParser) -> None:
        self._source = chunks.__aiter__()
        self._parser = parser
        self._pending: deque[Event] = deque()
        self.current = 0  # number of the part whose events are being handed out

    async def next(self) -> Event:
        while not self._pending:
            try:
                chunk = await anext(self._source)
            except StopAsyncIteration:
                self._pending.extend(self._parser.close())
            else:
                self._pending.extend(self._parser.feed(chunk))
        event = self._pending.popleft()
        if isinstance(event, MultipartError):
            raise event
        if isinstance(event, PartHeaders):
            self.current += 1
        return event


class _Body:
    def __init__(self, stream: _EventStream, number: int) -> None:
        self._stream = stream
        self._number = number
        self.done = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        if self._stream.current != self._number:
            raise RuntimeError("multipart part body read after the parser moved to the next part")
        event = await self._stream.next()
        if isinstance(event, PartData):
            return event.data
        self.done = True  # PartEnd
        raise StopAsyncIteration


async def iter_parts(
    chunks: AsyncIterator[bytes],
    boundary: bytes,
    *,
    max_part_bytes: int,
    max_header_bytes: int = 16384,
    max_parts: int = 10000,
) -> AsyncIterator[Part]:
    """Yield the body parts of a ``multipart/related`` stream (RFC 2046 §5.1.1, RFC 2387).

    Preamble and epilogue are discarded (the epilogue is not even read). Nested multipart parts
    are ordinary opaque bodies. Raises :class:`MultipartError` for a bad or absent boundary, a
    missing closing delimiter, an oversized header block or too many parts, and
    :class:`PartTooLarge` when a body exceeds ``max_part_bytes``.
    """
    parser = RelatedParser(
        boundary, max_part_bytes=max_part_bytes, max_header_bytes=max_header_bytes, max_parts=max_parts
    )
    stream = _EventStream(chunks, parser)
    while True:
        event = await stream.next()
        if isinstance(event, BodyEnd):
            return
        assert isinstance(event, PartHeaders)
        part = Part(event.headers, stream)
        yield part
        body = part.body
        assert isinstance(body, _Body)
        if not body.done:  # discard whatever the consumer left unread
            while not isinstance(await stream.next(), PartEnd):
                pass


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a ``multipart/related`` Content-Type (quoted or not;
    parsed by the standard library's RFC 2045 parameter rules)."""
    header = Message()
    header["content-type"] = content_type
    value = header.get_param("boundary")
    if not isinstance(value, str) or not value:
        raise MultipartError("the Content-Type has no multipart boundary")
    return value.encode("latin-1")


def iter_related(
    content_type: str, chunks: Iterable[bytes], *, max_part_bytes: int
) -> Iterator[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` body read synchronously (e.g. a streamed HTTP
    response with this ``content_type``): (header fields, whole body), one part held at a time.
    Same rules and errors as :func:`iter_parts`: a body cut short raises :class:`MultipartError`."""
    parser = RelatedParser(boundary_of(content_type), max_part_bytes=max_part_bytes)
    headers: dict[str, str] = {}
    body = bytearray()
    for chunk in itertools.chain(chunks, [None]):
        for event in parser.close() if chunk is None else parser.feed(chunk):
            if isinstance(event, MultipartError):
                raise event
            if isinstance(event, PartHeaders):
                headers, body = event.headers, bytearray()
            elif isinstance(event, PartData):
                body += event.data
            elif isinstance(event, PartEnd):
                yield headers, bytes(body)
            else:
                return


def boundary() -> str:
    """A fresh random boundary: 32 hex digits, safe under RFC 2046 §5.1.1 and as a bare token."""
    return secrets.token_hex(16)


def _param(value: str) -> str:
    """A parameter value as an RFC 9110 §5.6.6 token, or a quoted-string when it is not one."""
    if value and all(c in _TOKEN_CHARS for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def content_type_related(type_: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The ``Content-Type`` of a multipart/related body (RFC 2387 §3.1, PS3.18 §8.7.3.5)."""
    value = f'multipart/related; type="{type_}"'
    if transfer_syntax is not None:
        value += f"; transfer-syntax={_param(transfer_syntax)}"
    return f"{value}; boundary={_param(validate_boundary(boundary))}"


def _header_block(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n\0 ") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"unsafe multipart part header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return ("".join(lines) + "\r\n").encode("latin-1")


def related_length(parts: Iterable[tuple[Mapping[str, str], int]], boundary: str) -> int:
    """The exact byte length of what :func:`related_stream` writes for parts with these header
    fields and body sizes (a ``Content-Length`` instead of chunked framing)."""
    dash = len(validate_boundary(boundary)) + 2
    total = count = 0
    for headers, size in parts:
        total += dash + len(_CRLF) + len(_header_block(headers)) + size
        count += 1
    return total + len(_CRLF) * count + dash + 2 + len(_CRLF)


async def related_stream(
    parts: AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]], boundary: str
) -> AsyncIterator[bytes]:
    """Serialize parts as a multipart body (RFC 2046 §5.1.1): delimiter, headers, body, ..., close.

    Bodies are passed through chunk by chunk, so the stream never holds a whole part.
    """
    dash = b"--" + validate_boundary(boundary).encode("ascii")
    separator = b""
    async for headers, body in parts:
        yield separator + dash + _CRLF + _header_block(headers)
        separator = _CRLF
        async for chunk in body:
            if chunk:
                yield chunk
    yield separator + dash + b"--" + _CRLF
