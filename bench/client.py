"""The one client every imaging scenario uses for both servers (issue 7 "Honesty"): httpx, bodies
streamed and counted (never buffered), timings taken around the same calls for every side.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAMES_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"


class BadAnswer(RuntimeError):
    """A server answered something other than 200: the scenario fails (it is not measured)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Fetched:
    size: int
    ttfb: float  # seconds until the first body bytes arrived
    seconds: float  # until the last byte

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds


def fetch(http: httpx.Client, url: str, headers: dict[str, str]) -> Fetched:
    """GET ``url``, streaming the body and counting its bytes."""
    start = time.perf_counter()
    first = 0.0
    size = 0
    with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise BadAnswer(
                f"GET {url} answered {response.status_code}: {response.text[:200]}", response.status_code
            )
        for chunk in response.iter_raw():
            if not first:
                first = time.perf_counter()
            size += len(chunk)
    end = time.perf_counter()
    return Fetched(size, (first or end) - start, end - start)


def latency_batch(
    http: httpx.Client, url: str, headers: dict[str, str], count: int, into: list[float]
) -> float:
    """The median milliseconds of ``count`` sequential GETs of ``url``; every latency goes to ``into``."""
    times = []
    for _ in range(count):
        times.append(fetch(http, url, headers).seconds * 1000)
    into.extend(times)
    return statistics.median(times)


@dataclass
class Burst:
    requests: int
    seconds: float
    latencies: list[float]  # milliseconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _burst(urls: Sequence[str], headers: dict[str, str], clients: int) -> Burst:
    latencies: list[float] = []
    queue = list(reversed(urls))

    async def client() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            while queue:
                url = queue.pop()
                start = time.perf_counter()
                async with http.stream("GET", url, headers=headers) as response:
                    if response.status_code != 200:
                        raise BadAnswer(f"GET {url} answered {response.status_code}")
                    async for _ in response.aiter_raw():
                        pass
                latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Burst(len(urls), time.perf_counter() - start, latencies)


def burst(urls: Sequence[str], headers: dict[str, str], clients: int) -> Burst:
    """GET every URL over ``clients`` concurrent connections; requests/s and each latency."""
    return asyncio.run(_burst(urls, headers, clients))


def concurrently(tasks: Sequence[Callable[[], object]]) -> float:
    """Run ``tasks`` in threads at once; re-raise the first failure; return the wall-clock seconds."""
    errors: list[Exception] = []

    def run(task: Callable[[], object]) -> None:
        try:
            task()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(task,)) for task in tasks]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


@dataclass
class RssSampler:
    """Samples ``read()`` (bytes) every ``interval`` seconds in a thread: the series and its peak."""

    read: Callable[[], int]
    interval: float = 0.05
    series: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        start = time.perf_counter()

        def run() -> None:
            while True:
                self.series.append((time.perf_counter() - start, self.read()))
                if self._stop.wait(self.interval):
                    return

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.series)
