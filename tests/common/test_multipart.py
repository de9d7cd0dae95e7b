"""Tests for imagebridge.common.multipart (RFC 2046 §5.1, security.md DI-13)."""

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Iterable

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imagebridge.common.multipart import (
    BodyEnd,
    MultipartError,
    PartData,
    PartEnd,
    PartHeaders,
    PartTooLarge,
    RelatedParser,
    boundary,
    content_type_related,
    iter_parts,
    iter_related,
    related_length,
    related_stream,
    validate_boundary,
)

B = "b0und4ry"
MB = 1 << 20


async def _source(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def _parse(chunks: Iterable[bytes], boundary_: str = B, **limits: int) -> list[tuple[dict[str, str], bytes]]:
    async def run() -> list[tuple[dict[str, str], bytes]]:
        parts = iter_parts(
            _source(chunks), boundary_.encode(), max_part_bytes=limits.pop("max_part_bytes", MB), **limits
        )
        return [(dict(part.headers), await part.read()) async for part in parts]

    return asyncio.run(run())


def _write(parts: list[tuple[dict[str, str], bytes]], boundary_: str = B) -> bytes:
    async def parts_source() -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        for headers, body in parts:
            yield headers, _source(_chunked(body, 7) or [b""])

    async def run() -> bytes:
        return b"".join([chunk async for chunk in related_stream(parts_source(), boundary_)])

    return asyncio.run(run())


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- round trips -------------------------------------------------------------------------------

_REAL_DELIMITER = re.compile(rb"\r\n--" + B.encode() + rb"([ \t]*\r\n|--)")
_bodies = st.lists(
    st.sampled_from([b"\r", b"\n", b"-", b"--", B.encode(), b"x", b" ", b"\x00", b"\xff"]), max_size=30
).map(b"".join)
_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Content-Location", "X-Extra"]),
    st.sampled_from(["application/dicom", "a; b=c", "", "v"]),
    max_size=3,
)


@given(
    parts=st.lists(st.tuples(_headers, _bodies), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_random_splits(parts: list[tuple[dict[str, str], bytes]], cuts: list[int]) -> None:
    for _, body in parts:
        assume(not _REAL_DELIMITER.search(b"\r\n" + body + b"\r\n"))
    data = _write(parts)
    expected = [({k.lower(): v for k, v in h.items()}, body) for h, body in parts]
    assert _parse(_split(data, cuts)) == expected


@given(body=st.binary(max_size=300))
def test_round_trip_one_byte_chunks(body: bytes) -> None:
    data = _write([({"Content-Type": "application/dicom"}, body), ({}, body[::-1])], "x" * 70)
    parsed = _parse([bytes([b]) for b in data], "x" * 70)
    assert parsed == [({"content-type": "application/dicom"}, body), ({}, body[::-1])]


def test_boundary_inside_body_without_crlf_is_data() -> None:
    bodies = [
        b"--" + B.encode() + b"--",
        b"abc--" + B.encode() + b"\r\n",
        b"\n--" + B.encode() + b"\r\n",
        b"x\r\n--" + B.encode() + b"x\r\n--" + B.encode() + b"-x",
        b"\r\n--" + B.encode() + b" x",
    ]
    data = _write([({}, body) for body in bodies])
    for size in (1, 2, 3, 5, 11, 64, len(data)):
        assert [body for _, body in _parse(_chunked(data, size))] == bodies


def test_opening_delimiter_at_start_and_after_preamble() -> None:
    body = b"--b0und4ry\r\nA: 1\r\n\r\nhello\r\n--b0und4ry--"
    assert _parse([body]) == [({"a": "1"}, b"hello")]
    assert _parse([b"preamble text\r\n" + body + b"\r\nepilogue"]) == [({"a": "1"}, b"hello")]


def test_transport_padding_after_delimiter() -> None:
    data = b"--b0und4ry \t \r\n\r\none\r\n--b0und4ry\t\r\n\r\ntwo\r\n--b0und4ry--  \r\n"
    assert [body for _, body in _parse(_chunked(data, 1))] == [b"one", b"two"]


def test_too_much_transport_padding() -> None:
    data = b"--b0und4ry" + b" " * 5000 + b"\r\n\r\nx\r\n--b0und4ry--"
    with pytest.raises(MultipartError, match="whitespace"):
        _parse([data])


def test_headers_folded_repeated_and_absent() -> None:
    data = (
        b"--b0und4ry\r\nContent-Type: multipart/related;\r\n type=x\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody"
        b"\r\n--b0und4ry\r\n\r\n\r\n--b0und4ry--"
    )
    assert _parse([data]) == [
        ({"content-type": "multipart/related; type=x", "x-a": "1, 2"}, b"body"),
        ({}, b""),
    ]


def test_malformed_header_line() -> None:
    with pytest.raises(MultipartError, match="malformed multipart part header"):
        _parse([b"--b0und4ry\r\nno colon here\r\n\r\nx\r\n--b0und4ry--"])


def test_nested_multipart_is_opaque() -> None:
    inner = _write([({"Content-Type": "application/dicom"}, b"deep")], "inner")
    data = _write([({"Content-Type": 'multipart/related; boundary="inner"'}, inner)])
    assert _parse(_chunked(data, 3)) == [({"content-type": 'multipart/related; boundary="inner"'}, inner)]


def test_zero_parts() -> None:
    data = _write([])
    assert data == b"--b0und4ry--\r\n"
    assert _parse([data]) == []


# --- rejections --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "missing or empty"), ("x" * 71, "71 characters"), ("a\r\nb", "printable"), ("ab ", "space")],
)
def test_bad_boundaries(value: str, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        validate_boundary(value)
    with pytest.raises(MultipartError, match=message):
        _parse([b"--x\r\n\r\n\r\n--x--"], value)


def test_boundary_of_70_and_odd_characters_accepted() -> None:
    for value in ("x" * 70, "'()+_,-./:=? x", "=_Part_0_12.34", '\\\\"\\\\'):
        assert validate_boundary(value) == value
        data = _write([({}, b"ok")], value)
        assert _parse(_chunked(data, 4), value) == [({}, b"ok")]


def test_wrong_boundary() -> None:
    with pytest.raises(MultipartError, match="no boundary delimiter"):
        _parse([_write([({}, b"x")], "other")])


def test_every_truncation_is_rejected() -> None:
    data = _write([({"Content-Type": "application/dicom"}, b"first\r\n--b0und4"), ({}, b"second")])
    complete = data.index(b"--b0und4ry--") + len(b"--b0und4ry--")
    for end in range(complete):
        with pytest.raises(MultipartError):
            _parse(_chunked(data[:end], 3))
    for end in range(complete, len(data) + 1):
        assert len(_parse([data[:end]])) == 2


def test_header_block_too_large_is_rejected_early() -> None:
    consumed = 0

    def endless() -> Iterable[bytes]:
        nonlocal consumed
        yield b"--b0und4ry\r\n"
        while True:
            consumed += 1024
            yield b"X-Long: " + b"a" * 1016

    with pytest.raises(MultipartError, match="headers exceed 16384 bytes"):
        _parse(endless())
    assert consumed <= 16384 + 2048


def test_too_many_parts() -> None:
    one = b"\r\n--b0und4ry\r\n\r\nx"
    data = one * 100_000 + b"\r\n--b0und4ry--"
    with pytest.raises(MultipartError, match="more than 10000 parts"):
        _parse(_chunked(data, 65536))
    assert len(_parse(_chunked(data, 65536), max_parts=100_000)) == 100_000


def test_part_too_large() -> None:
    data = _write([({}, b"a" * 100), ({}, b"b" * 101)])
    assert [len(body) for _, body in _parse([data], max_part_bytes=101)] == [100, 101]
    with pytest.raises(PartTooLarge, match="larger than 100 bytes"):
        _parse(_chunked(data, 9), max_part_bytes=100)
    assert issubclass(PartTooLarge, MultipartError)
    assert issubclass(MultipartError, ValueError)


def test_unread_parts_are_skipped_and_old_bodies_refuse() -> None:
    data = _write([({"n": "1"}, b"one" * 50), ({"n": "2"}, b"two")])

    async def run() -> list[bytes]:
        seen = []
        first = None
        async for part in iter_parts(_source(_chunked(data, 5)), B.encode(), max_part_bytes=MB):
            if part.headers["n"] == "1":
                first = part
                await anext(part.body)  # read one chunk, abandon the rest
                continue
            assert part.content_type is None
            seen.append(await part.read())
            assert first is not None
            with pytest.raises(RuntimeError, match="moved to the next part"):
                await anext(first.body)
        return seen

    assert asyncio.run(run()) == [b"two"]


def test_body_chunks_without_a_delimiter_are_handed_out_uncopied() -> None:
    parser = RelatedParser(B.encode(), max_part_bytes=MB)
    assert isinstance(parser.feed(b"--b0und4ry\r\n\r\nfirst")[0], PartHeaders)
    whole = bytes(range(256)) * 200  # no CR in its last bytes: nothing there can start a delimiter
    ends_in_cr = b"y" * 1000 + b"\r\n-"
    events = parser.feed(whole) + parser.feed(ends_in_cr) + parser.feed(b"-b0und4ry--")
    assert isinstance(events[0], PartData)
    assert events[0].data is whole
    bodies = b"".join(e.data for e in events if isinstance(e, PartData))
    assert bodies == whole + b"y" * 1000  # the CR LF - waited for the bytes that made it a delimiter
    assert isinstance(events[-2], PartEnd)
    assert isinstance(events[-1], BodyEnd)


# --- bounded memory ----------------------------------------------------------------------------


class _Meter:
    """A chunk source that records how many bytes the parser has pulled."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.pulled += len(chunk)
            yield chunk


def _max_buffered(meter: _Meter, overhead: int) -> tuple[int, int]:
    """Consume every body chunk; return (max bytes held inside the parser, body bytes)."""

    async def run() -> tuple[int, int]:
        delivered = worst = 0
        async for part in iter_parts(meter.__aiter__(), B.encode(), max_part_bytes=1 << 40):
            async for chunk in part.body:
                delivered += len(chunk)
                worst = max(worst, meter.pulled - delivered - overhead)
        return worst, delivered

    return asyncio.run(run())


def test_300_mb_part_with_bounded_buffer() -> None:
    chunk_size = 65536
    pattern = b"\r\n--" + B.encode()[:-1] + b"?\r\n-"  # near-miss delimiters everywhere
    chunk = (pattern * (chunk_size // len(pattern) + 1))[:chunk_size]
    count = 300 * MB // chunk_size
    head = b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\n"

    def stream() -> Iterable[bytes]:
        yield head
        for _ in range(count):
            yield chunk
        yield b"\r\n--b0und4ry--\r\n"

    worst, delivered = _max_buffered(_Meter(stream()), len(head))
    assert delivered == count * chunk_size
    assert worst <= chunk_size + len(B) + 4


def test_crlf_preamble_and_epilogue_are_not_buffered() -> None:
    ten_mb = b"\r\n" * (5 * MB)
    data = ten_mb + b"\r\n--b0und4ry\r\n\r\nbody\r\n--b0und4ry--" + ten_mb
    meter = _Meter(_chunked(data, 65536))
    worst, delivered = _max_buffered(meter, len(ten_mb) + len(b"\r\n--b0und4ry\r\n\r\n"))
    assert delivered == 4
    assert worst <= 65536 + len(B) + 4
    assert meter.pulled < len(data)  # the epilogue is never read


# --- writer ------------------------------------------------------------------------------------


def test_boundary_is_random_and_safe() -> None:
    values = {boundary() for _ in range(100)}
    assert len(values) == 100
    for value in values:
        assert re.fullmatch(r"[0-9a-f]{32}", value)
        assert validate_boundary(value) == value


def test_related_stream_layout() -> None:
    data = _write([({"Content-Type": "application/dicom"}, b"A"), ({}, b"")])
    assert data == (
        b"--b0und4ry\r\nContent-Type: application/dicom\r\n\r\nA\r\n--b0und4ry\r\n\r\n\r\n--b0und4ry--\r\n"
    )


@pytest.mark.parametrize("count", [0, 1, 3])
def test_related_length_is_what_related_stream_writes(count: int) -> None:
    parts = [
        ({"Content-Type": f"application/dicom; n={n}"}, bytes(range(n * 40 % 256)) * n) for n in range(count)
    ]
    assert related_length([(h, len(b)) for h, b in parts], B) == len(_write(parts))


@pytest.mark.parametrize("headers", [{"X": "a\r\nInjected: 1"}, {"X:Y": "a"}, {"": "a"}, {"X": "\x00"}])
def test_related_stream_refuses_header_injection(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unsafe multipart part header"):
        _write([(headers, b"x")])


def test_content_type_related() -> None:
    assert (
        content_type_related("application/dicom", "abc")
        == 'multipart/related; type="application/dicom"; boundary=abc'
    )
    assert (
        content_type_related("application/dicom", "a:b", "1.2.840.10008.1.2.1")
        == 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; boundary="a:b"'
    )
    assert content_type_related("application/octet-stream", 'q"\\').endswith('boundary="q\\"\\\\"')
    with pytest.raises(MultipartError):
        content_type_related("application/dicom", "")


# --- the synchronous reader (clients of WADO-RS) ---------------------------------------------


@given(
    parts=st.lists(st.tuples(_headers, _bodies), max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
)
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_sync_reader_agrees_with_the_async_one(
    parts: list[tuple[dict[str, str], bytes]], cuts: list[int]
) -> None:
    for _, body in parts:
        assume(not _REAL_DELIMITER.search(b"\r\n" + body + b"\r\n"))
    data = _write(parts)
    content_type = content_type_related("application/dicom", B)
    assert list(iter_related(content_type, _split(data, cuts), max_part_bytes=MB)) == _parse(
        _split(data, cuts)
    )


def test_sync_reader_refuses_a_cut_body_and_finds_quoted_boundaries() -> None:
    data = _write([({}, b"one"), ({}, b"two")], "a:b")
    content_type = content_type_related("application/dicom", "a:b")
    assert 'boundary="a:b"' in content_type
    assert [body for _, body in iter_related(content_type, [data], max_part_bytes=MB)] == [b"one", b"two"]
    with pytest.raises(MultipartError, match="no closing delimiter"):
        list(iter_related(content_type, [data[:-8]], max_part_bytes=MB))
    with pytest.raises(MultipartError, match="no multipart boundary"):
        list(iter_related("multipart/related", [data], max_part_bytes=MB))


# --- any body, any chunking ----------------------------------------------------------------------

_raw_bodies = st.lists(
    st.sampled_from(
        [
            b"\r\n--" + B.encode(),
            b"--" + B.encode(),
            b"\r\n--" + B.encode()[:-1],
            B.encode(),
            b"\r\n",
            b"\r",
            b"\n",
            b"-",
            b"--",
            b" ",
            b"\t",
            b"x",
            b"\r\n\r\n",
            b"X: y\r\n",
        ]
    ),
    max_size=40,
).map(b"".join)


def _outcome(chunks: Iterable[bytes], max_part_bytes: int) -> list[object]:
    """The parser's events for ``chunks``, each part's data joined, errors as (type, message)
    with the data of the part they ended left out."""
    parser = RelatedParser(B.encode(), max_part_bytes=max_part_bytes, max_header_bytes=64)
    events = [event for chunk in chunks for event in parser.feed(chunk)] + parser.close()
    outcome: list[object] = []
    for event in events:
        if isinstance(event, PartData):
            assert event.data  # no empty pieces
            if outcome and isinstance(outcome[-1], bytes):
                outcome[-1] += event.data
                continue
            outcome.append(event.data)
        elif isinstance(event, MultipartError):
            if outcome and isinstance(outcome[-1], bytes):
                outcome.pop()  # how much of a failed part came before the error depends on the chunks
            outcome.append((type(event), str(event)))
        elif isinstance(event, PartHeaders):
            outcome.append(event.headers)
        else:
            outcome.append(type(event))
    return outcome


@given(
    body=_raw_bodies,
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=25),
    max_part_bytes=st.integers(min_value=0, max_value=40),
)
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_any_body_parses_alike_in_any_chunks(body: bytes, cuts: list[int], max_part_bytes: int) -> None:
    """Preamble, delimiters split anywhere (CR LF too), padding, the close delimiter, near-miss
    boundaries and the part size limit: the chunking never changes parts, bodies or errors."""
    whole = _outcome([body], max_part_bytes)
    assert _outcome(_split(body, cuts), max_part_bytes) == whole
    assert _outcome([bytes([b]) for b in body], max_part_bytes) == whole


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11, 13, 64])
def test_limit_and_delimiters_across_chunks(size: int) -> None:
    head = b"pre\r\n--b0und4ry \t\r\nA: 1\r\n\r\n"
    data = head + b"ab--b0und4ry\r\n--b0und4ryx\r" + b"\r\n--b0und4ry--\r\nepilogue"
    body = b"ab--b0und4ry\r\n--b0und4ryx\r"  # the boundary without CR LF, then with other bytes after it
    assert _outcome(_chunked(data, size), 26) == [{"a": "1"}, body, PartEnd, BodyEnd]
    too_large = _outcome(_chunked(data, size), 25)
    assert too_large[0] == {"a": "1"}
    assert too_large[-1] == (PartTooLarge, "a multipart part is larger than 25 bytes")
