"""``bench/run``: the one command of issue 7 — install what is missing, run every scenario module,
stop everything it started, write the raw JSON and regenerate docs/benchmarks.md with its plots.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.context import BenchContext
from bench.report import plots, render, table
from bench.result import Result, failed

ROOT = Path(__file__).resolve().parent.parent
#: Scenario modules, imported lazily: one that is missing or raises becomes a failed Result.
MODULES = ("bench.imaging_scenarios", "bench.ehr_scenarios", "bench.gate_scenarios")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare() -> None:
    """Debian packages when root and missing, and PostgreSQL/Redis when installed but down."""
    for script in ("system-deps.sh", "services.sh"):
        subprocess.run(["sh", str(ROOT / "scripts" / script)], check=False)


def run_module(ctx: BenchContext, module: str) -> list[Result]:
    """``module.measure(ctx)``; an import error or exception is kept as a failed Result."""
    try:
        measure = importlib.import_module(module).measure
        results: list[Result] = measure(ctx)
        return results
    except Exception as exc:
        return [
            failed(module.removeprefix("bench."), "—", "", "higher", f"{type(exc).__name__}: {exc}"[:500])
        ]
    finally:
        ctx.stop_all()


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith(prefix)), "?")
    except OSError:
        return "?"


def _postgres_version() -> str:
    try:
        done = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc", "SHOW server_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "not available"
    return done.stdout.strip() or "not available"


def machine(ctx: BenchContext, started: float) -> dict[str, Any]:
    """What the report says about where and how it was measured."""
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    from importlib.metadata import version

    memory_kib = _first_line("/proc/meminfo", "MemTotal").split()[0]
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if ctx.quick else "full",
        "repeats": ctx.repeats,
        "duration": f"{(time.monotonic() - started) / 60:.1f} min",
        "CPU": _first_line("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "RAM": f"{int(memory_kib) / 1024**2:.1f} GiB",
        "OS": platform.platform(),
        "imagebridge": f"{version('imagebridge')} (git {git.stdout.strip() or '?'})",
        "Python": platform.python_version(),
        "SQLite": sqlite3.sqlite_version,
        "PostgreSQL": _postgres_version(),
        **ctx.meta,
    }


def write(results: list[Result], meta: dict[str, Any], *, publish: bool, label: str) -> Path:
    """Raw JSON to bench/results/; the page and plots to docs/ (``publish``) or bench/work/report/."""
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=1, default=str)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (out / f"{stamp}-{label}.json").write_text(data)
    if publish:
        (out / "latest.json").write_text(data)
        page = ROOT / "docs" / "benchmarks.md"
        images = plots(results, ROOT / "docs" / "benchmarks")
    else:
        page = ROOT / "bench" / "work" / "report" / "benchmarks.md"
        images = plots(results, page.parent)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(results, meta, images, page))
    return page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small data sets, fewer repeats (< 5 min)")
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this")
    parser.add_argument("--repeats", type=int, default=0, help="measured repeats (default 5; 3 with --quick)")
    parser.add_argument("--publish", action="store_true", help="write docs/ even for --quick or --only")
    parser.add_argument("--no-install", action="store_true", help="do not run scripts/system-deps.sh")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if not args.no_install:
        prepare()
    work = ROOT / "bench" / "work"
    ctx = BenchContext(args.quick, args.repeats or (3 if args.quick else 5), work, args.only)
    started = time.monotonic()
    results: list[Result] = []
    try:
        for module in MODULES:
            print(f"{module} …", flush=True)
            results += run_module(ctx, module)
    except KeyboardInterrupt:
        print("interrupted: stopping every process this run started", file=sys.stderr)
        return 130
    finally:
        ctx.stop_all()
    label = ("quick" if args.quick else "full") + ("-only" if args.only else "")
    page = write(results, machine(ctx, started), publish=args.publish or label == "full", label=label)
    print(table(results))
    print(f"\nreport: {page}")
    return 0 if all(r.status != "failed" for r in results) else 1
