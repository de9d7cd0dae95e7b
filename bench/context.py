"""What ``bench/run`` hands every scenario module (issue 7 "What to build"): the mode, the number of
repeats, a work directory, alternation of two measured sides, and processes that are always stopped
by their PID — at the end of a scenario, and again by ``bench/run`` on failure or Ctrl-C.

A scenario module exposes ``measure(ctx: BenchContext) -> list[Result]`` (bench/result.py).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.result import Samples

from imagebridge.apps.stack import LocalStack, ServiceProcess, start_service

#: One measurement of one side: returns the sample value (ms, MB/s, …) of a single run.
Measure = Callable[[], float]


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass
class Process:
    """A process the benchmark started itself (Orthanc, a file server, SeaweedFS …), stopped by PID."""

    name: str
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM ``process`` by its PID, SIGKILL it after ``timeout`` seconds, and reap it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def alternate(a: Measure, b: Measure, repeats: int, warmup: int = 1) -> tuple[Samples, Samples]:
    """Run ``a`` and ``b`` as A B A B …: ``warmup`` untimed pairs, then ``repeats`` measured pairs,
    so both sides see the same drift of a shared machine (issue 7 "Why")."""
    for _ in range(warmup):
        a()
        b()
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(repeats):
        ours.append(a())
        peer.append(b())
    return Samples.of(ours), Samples.of(peer)


def timed(action: Callable[[], object]) -> Measure:
    """A ``Measure`` of the wall-clock milliseconds ``action`` takes."""

    def measure() -> float:
        start = time.perf_counter()
        action()
        return (time.perf_counter() - start) * 1000

    return measure


@dataclass
class BenchContext:
    """The run's settings and the processes it has started (stopped newest first by ``stop_all``)."""

    quick: bool
    repeats: int
    work: Path
    only: str = ""
    started: list[Stoppable] = field(default_factory=list)
    #: Versions and settings the scenarios found (e.g. ``Orthanc``), shown in the report.
    meta: dict[str, str] = field(default_factory=dict)
    clock: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        """Progress on stdout, with the minutes since the run began."""
        print(f"[{(time.monotonic() - self.clock) / 60:5.1f} min] {text}", flush=True)

    def wants(self, scenario: str) -> bool:
        """Whether ``--only`` selects ``scenario`` (a substring match; everything by default)."""
        return self.only in scenario

    def scratch(self, name: str) -> Path:
        """An empty directory ``work/run/<name>`` for this run's servers (their data and logs)."""
        path = self.work / "run" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def track(self, process: Stoppable) -> None:
        self.started.append(process)

    def release(self, process: Stoppable) -> None:
        """Stop ``process`` now and forget it."""
        process.stop()
        if process in self.started:
            self.started.remove(process)

    def stop_all(self) -> None:
        while self.started:
            self.started.pop().stop()

    @contextmanager
    def popen(self, name: str, args: list[str], log: Path, **kwargs: Any) -> Iterator[Process]:
        """Run ``args`` in its own session with output to ``log`` until the block ends."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        process = Process(name, popen)
        self.track(process)
        try:
            yield process
        finally:
            self.release(process)

    @contextmanager
    def service(
        self, name: str, env: dict[str, str], url: str, log: Path, *args: str
    ) -> Iterator[ServiceProcess]:
        """``imagebridge <name> serve`` as a real process, ready on ``url``, until the block ends."""
        service = start_service(name, env, url, log, *args)
        self.track(service)
        try:
            yield service
        finally:
            self.release(service)

    @contextmanager
    def local_stack(
        self, name: str, imaging_args: tuple[str, ...] = (), **settings: Any
    ) -> Iterator[LocalStack]:
        """A provisioned EHR + imaging system (``LocalStack`` fields as ``settings``) in a fresh
        ``scratch(name)``, started with ``imaging_args`` (e.g. ``--workers 2``) until the block ends."""
        stack = LocalStack(self.scratch(name), **settings)
        stack.provision()
        self.track(stack)
        try:
            stack.start(imaging_args)
            yield stack
        finally:
            self.release(stack)


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    """``VmRSS`` (or ``VmHWM``, the peak) of ``pid`` in KiB, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise LookupError(f"{field_name} not in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s children (every thread's), from ``/proc``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (e.g. ``--workers`` processes); 0 if gone."""
    try:
        return rss_kib(pid) * 1024 + sum(tree_rss(c) for c in children(pid))
    except (FileNotFoundError, ProcessLookupError, LookupError):
        return 0
