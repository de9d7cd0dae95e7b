"""RFC 2046 §5.1 ``multipart/related`` (RFC 2387) bodies: a streaming parser and a writer.

PS3.18 §8.6.1.2 carries every multi-instance DICOMweb payload (STOW-RS requests, WADO-RS
responses) as ``multipart/related``. The parser works on an async stream of byte chunks and never
holds more than one chunk plus a boundary's worth of overlap (or one bounded header block), so a
2 GB instance can be spooled to disk and a hostile body (security.md DI-13) costs linear time and
bounded memory. It uses ``bytearray.find`` only: no regular expression sees the body.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Mapping

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


class Part:
    """One body part: its header fields and a once-only async iterator over its body.

    Header names are lower-cased; repeated fields are joined with ``", "``. The body must be
    consumed (or abandoned) before the next part is requested; abandoned bytes are discarded.
    """

    def __init__(self, headers: Mapping[str, str], scanner: _Scanner) -> None:
        self.headers = headers
        self.body: AsyncIterator[bytes] = _Body(scanner, scanner.part_count)

    @property
    def content_type(self) -> str | None:
        """The part's ``Content-Type`` field, if any."""
        return self.headers.get("content-type")

    async def read(self) -> bytes:
        """Return the whole remaining body (bounded by ``max_part_bytes``)."""
        return b"".join([chunk async for chunk in self.body])


class _Body:
    def __init__(self, scanner: _Scanner, index: int) -> None:
        self._scanner = scanner
        self._index = index
        self._done = False

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        if self._scanner.part_count != self._index:
            raise RuntimeError("multipart part body read after the parser moved to the next part")
        chunk = await self._scanner.body_chunk()
        if chunk is None:
            self._done = True
            raise StopAsyncIteration
        return chunk


class _Scanner:
    """Buffer and state of one multipart stream; every search is a ``find`` over the buffer."""

    def __init__(
        self, chunks: AsyncIterator[bytes], boundary: bytes, max_part_bytes: int, max_header_bytes: int
    ) -> None:
        self._source = chunks.__aiter__()
        self._delimiter = _CRLF + b"--" + boundary
        # A virtual CRLF lets a dash-boundary at the very start match like every other delimiter.
        self._buf = bytearray(_CRLF)
        self._max_part_bytes = max_part_bytes
        self._max_header_bytes = max_header_bytes
        self._part_bytes = 0
        self.in_body = False
        self.more_parts = False
        self.part_count = 0

    async def _fill(self) -> bool:
        try:
            chunk = await anext(self._source)
        except StopAsyncIteration:
            return False
        self._buf += chunk
        return True

    async def skip_preamble(self) -> None:
        """Discard everything before the first delimiter (RFC 2046 §5.1.1 preamble)."""
        keep = len(self._delimiter) - 1
        while True:
            found = self._buf.find(self._delimiter)
            if found >= 0:
                del self._buf[:found]
                follows = await self._after_delimiter()
                if follows is not None:
                    self.more_parts = follows
                    return
                del self._buf[:1]
                continue
            del self._buf[: max(0, len(self._buf) - keep)]
            if not await self._fill():
                raise MultipartError("multipart body has no boundary delimiter (wrong or missing boundary?)")

    async def _after_delimiter(self) -> bool | None:
        """Classify the delimiter at the start of the buffer and consume it.

        Returns True when a part follows (``--boundary`` + padding + CRLF), False for the close
        delimiter (``--boundary--``), None when the bytes are not a delimiter after all.
        """
        n = len(self._delimiter)
        while True:
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
            if not await self._fill():
                raise MultipartError("multipart body ends inside a boundary (no closing delimiter)")

    async def read_headers(self) -> dict[str, str]:
        """Read one part's header block, up to and including the empty line (RFC 2046 §5.1.1)."""
        self.part_count += 1
        self._part_bytes = 0
        start = 0
        while True:
            if self._buf.startswith(_CRLF):
                del self._buf[:2]
                self.in_body = True
                return {}
            end = self._buf.find(b"\r\n\r\n", start)
            if end > self._max_header_bytes or (end < 0 and len(self._buf) > self._max_header_bytes + 3):
                raise MultipartError(f"multipart part headers exceed {self._max_header_bytes} bytes")
            if end >= 0:
                block = bytes(self._buf[:end])
                del self._buf[: end + 4]
                self.in_body = True
                return _parse_headers(block)
            start = max(0, len(self._buf) - 3)
            if not await self._fill():
                raise MultipartError("multipart body ends inside part headers (no closing delimiter)")

    async def body_chunk(self) -> bytes | None:
        """Next piece of the current body; None once its terminating delimiter is consumed."""
        if not self.in_body:
            return None
        start = 0
        while True:
            found = self._buf.find(self._delimiter, start)
            if found == 0:
                follows = await self._after_delimiter()
                if follows is not None:
                    self.in_body = False
                    self.more_parts = follows
                    return None
                start = 1  # "--boundary" followed by other bytes is body data
                continue
            if found > 0:
                return self._take(found)
            safe = len(self._buf) - len(self._delimiter) + 1
            if safe > 0:
                return self._take(safe)
            if not await self._fill():
                raise MultipartError("multipart body ends inside a part (no closing delimiter)")

    def _take(self, size: int) -> bytes:
        self._part_bytes += size
        if self._part_bytes > self._max_part_bytes:
            raise PartTooLarge(f"a multipart part is larger than {self._max_part_bytes} bytes")
        chunk = bytes(self._buf[:size])
        del self._buf[:size]
        return chunk


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
    validate_boundary(boundary.decode("latin-1"))
    scanner = _Scanner(chunks, boundary, max_part_bytes, max_header_bytes)
    await scanner.skip_preamble()
    while scanner.more_parts:
        if scanner.part_count >= max_parts:
            raise MultipartError(f"multipart body has more than {max_parts} parts")
        part = Part(await scanner.read_headers(), scanner)
        yield part
        while await scanner.body_chunk() is not None:
            pass  # discard whatever the consumer left unread


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
