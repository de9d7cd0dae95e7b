"""Running one scenario module of bench/ on its own (``python bench/<module>.py [--quick]``),
without ``bench/run``: a temporary work folder, the Results printed."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.result import Result


class BenchContext(Protocol):
    """What the scenario modules need of ``bench/run``'s context."""

    quick: bool
    repeats: int
    work: Path


@dataclass
class _Context:
    quick: bool
    repeats: int
    work: Path


def run(
    measure: Callable[[BenchContext], list[Result]], description: str, argv: list[str] | None = None
) -> None:
    """Parse ``--quick``/``--repeats``, measure in a temporary folder and print each Result."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        ctx = _Context(args.quick, args.repeats or (3 if args.quick else 5), Path(work))
        for result in measure(ctx):
            ours = result.ours.summary() if result.ours else None
            peer = (
                f"; {result.peer_name} {result.peer.summary()}; ratio {result.ratio():.2f}"
                if result.peer
                else ""
            )
            verdict = {True: "met", False: "NOT met", None: "-"}[result.verdict()]
            print(f"{result.scenario} [{result.metric}] {result.status}: {ours} {result.unit}{peer}")
            print(f"    target {verdict}")
            print(f"    {result.note}")
