"""Running one scenario module of bench/ on its own (``python bench/<module>.py [--quick]``),
without ``bench/run``: a temporary work folder, every process stopped at the end, Results printed."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench.context import BenchContext
from bench.result import Result


def run(measure: Callable[[BenchContext], list[Result]], description: str) -> None:
    """Parse ``--quick``/``--repeats``/``--only``, measure in a temporary folder, print each Result."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=0)
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        ctx = BenchContext(args.quick, args.repeats or (3 if args.quick else 5), Path(work), args.only)
        try:
            results = measure(ctx)
        finally:
            ctx.stop_all()
    for result in results:
        ours = result.ours.summary() if result.ours else None
        peer = f"; {result.peer_name} {result.peer.summary()}" if result.peer else ""
        verdict = {True: "met", False: "NOT met", None: "-"}[result.verdict()]
        print(f"{result.scenario} [{result.metric}] {result.status}: {ours} {result.unit}{peer}")
        print(f"    target {verdict}; {result.note}")
