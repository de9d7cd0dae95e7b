"""Client-side load for the scenarios of bench/: throughput over several connections, latency
percentiles over one, and the CPU each side spent (issue 7 "Honesty": the same client code for
every server; a report that says whether the client or the server was the bottleneck).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import httpx

#: One request of a load: send request number ``n`` on ``http`` and return the response.
Send = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process ``pid`` has used so far (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


@dataclass
class Load:
    """What one timed burst of requests achieved."""

    requests: int
    seconds: float
    client_cpu: float  # CPU seconds of this (client) process during the burst
    server_cpu: float | None  # CPU seconds of the server process during the burst
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def describe(self) -> str:
        server = f", server CPU {self.server_cpu / self.seconds:.0%}" if self.server_cpu is not None else ""
        return f"client CPU {self.client_cpu / self.seconds:.0%} of one core{server}"


async def _burst(send: Send, count: int, concurrency: int, server_pid: int | None) -> Load:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    statuses: Counter[int] = Counter()
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def worker(numbers: range) -> None:
            for n in numbers:
                statuses[(await send(http, n)).status_code] += 1

        # Requests 0 … concurrency-1 open the connections, untimed: the burst measures requests,
        # not TCP handshakes.
        await asyncio.gather(*(worker(range(n, n + 1)) for n in range(concurrency)))
        timed = range(concurrency, count)
        server_before = cpu_seconds(server_pid) if server_pid else 0.0
        client_before, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(timed[i::concurrency]) for i in range(concurrency)))
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - client_before
        server_cpu = cpu_seconds(server_pid) - server_before if server_pid else None
    return Load(len(timed), seconds, client_cpu, server_cpu, statuses)


def throughput(send: Send, count: int, concurrency: int, server_pid: int | None = None) -> Load:
    """Send requests ``0 … count-1`` over ``concurrency`` connections as fast as the server answers;
    the first ``concurrency`` of them (one per connection) are not timed. ``statuses`` counts all."""
    return asyncio.run(_burst(send, count, concurrency, server_pid))


def encode_post(url: str, form: dict[str, str], headers: dict[str, str] | None = None) -> bytes:
    """One complete HTTP/1.1 POST of ``form`` (urlencoded) to ``url``, ready to write to a socket."""
    parts = httpx.URL(url)
    body = urlencode(form).encode()
    head = [
        f"POST {parts.raw_path.decode()} HTTP/1.1",
        f"Host: {parts.host}:{parts.port}",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    """Send one pre-encoded request on a kept-alive connection; read the answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    length = {name.strip().lower(): value.strip() for name, value in fields.items()}.get("content-length")
    if length is None:
        raise RuntimeError(f"the server answered without Content-Length: {lines[0]}")
    await reader.readexactly(int(length))
    return int(lines[0].split(" ", 2)[1])


async def _raw_burst(url: str, requests: list[bytes], concurrency: int, server_pid: int | None) -> Load:
    parts = httpx.URL(url)
    connections = [await asyncio.open_connection(parts.host, parts.port) for _ in range(concurrency)]
    statuses: Counter[int] = Counter()

    async def worker(connection: tuple[asyncio.StreamReader, asyncio.StreamWriter], numbers: range) -> None:
        for n in numbers:
            statuses[await _exchange(*connection, requests[n])] += 1

    try:
        await asyncio.gather(*(worker(c, range(n, n + 1)) for n, c in enumerate(connections)))
        timed = range(concurrency, len(requests))
        server_before = cpu_seconds(server_pid) if server_pid else 0.0
        client_before, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(c, timed[i::concurrency]) for i, c in enumerate(connections)))
        seconds = time.perf_counter() - start
        client_cpu = time.process_time() - client_before
        server_cpu = cpu_seconds(server_pid) - server_before if server_pid else None
    finally:
        for _, writer in connections:
            writer.close()
            await writer.wait_closed()
    return Load(len(timed), seconds, client_cpu, server_cpu, statuses)


def raw_throughput(url: str, requests: list[bytes], concurrency: int, server_pid: int | None = None) -> Load:
    """Like :func:`throughput`, for scenarios without a peer whose server outruns httpx: requests
    encoded beforehand (:func:`encode_post`) go over ``concurrency`` kept-alive sockets to the
    origin of ``url``, and only each answer's status line and ``Content-Length`` are parsed, so
    the client spends a fraction of httpx's CPU per request (the report shows both sides' CPU)."""
    return asyncio.run(_raw_burst(url, requests, concurrency, server_pid))


def latencies(request: Callable[[], httpx.Response], count: int) -> list[float]:
    """Milliseconds of ``count`` sequential requests (each must answer 2xx)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        request().raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return times
