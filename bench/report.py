"""The benchmark report (issue 7 "Report"): ``docs/benchmarks.md`` with the machine, the versions,
one table row per Result (medians, min–max, ratio, target, verdict), the distance from the
machine's limits, and PNG plots (throughput bars, latency percentiles, RSS over time).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.result import Result, Samples

COMMAND = "make bench  # = .venv/bin/python bench/run; add BENCH_ARGS=--quick for the 5-minute smoke run"


def verdict(result: Result) -> str:
    """``met`` / ``not met`` against the issue's target, or why there is no verdict."""
    if result.status != "ok":
        return result.status
    met = result.verdict()
    if met is None:
        return "—" if result.target is None else "no peer"
    return "**met**" if met else "**not met**"


def _number(value: float) -> str:
    if value == 0:
        return "0"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:,.{min(digits, 3)}f}"


def _side(samples: Samples | None) -> str:
    if samples is None:
        return "—"
    return f"{_number(samples.median)} ({_number(samples.minimum)}–{_number(samples.maximum)})"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(results: Sequence[Result]) -> str:
    """One row per Result: medians with min–max, the ratio ours/peer, the target and the verdict."""
    rows = [
        "| scenario | metric | imagebridge | peer | peer is | ratio | target | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in results:
        ratio = r.ratio()
        target = ""
        if r.target is not None:
            sign = "≥" if r.better == "higher" else "≤"
            what = "ratio" if r.target.kind == "ratio" else f"{r.unit}"
            target = f"{what} {sign} {_number(r.target.value)} (issue {r.target.issue})"
        note = f" — {r.note[:300]}" if r.note and r.status != "ok" else ""
        if r.note and r.status == "ok":
            notes.append(f"* **{r.scenario}** ({r.metric}): {_cell(r.note)}")
        rows.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    r.scenario + note,
                    f"{r.metric} ({r.unit}, {'higher' if r.better == 'higher' else 'lower'} is better)"
                    if r.unit
                    else r.metric,
                    _side(r.ours),
                    _side(r.peer),
                    r.peer_name or "",
                    f"{ratio:.2f}" if ratio is not None else "—",
                    target,
                    verdict(r),
                )
            )
            + " |"
        )
    return "\n".join(rows) + ("\n\nNotes:\n\n" + "\n".join(notes) if notes else "")


def limits_table(results: Sequence[Result]) -> str:
    """How far each server's full-study throughput is from the machine's limits."""
    rows = ["| limit | MB/s (median) | imagebridge | Orthanc |", "|---|---|---|---|"]
    for limit in results:
        target_name = limit.extra.get("limit_for")
        if not target_name or limit.ours is None:
            continue
        served = next(
            (r for r in results if r.scenario == target_name and r.metric == "throughput" and r.ours), None
        )
        share = ["—", "—"]
        if served is not None:
            for n, side in enumerate((served.ours, served.peer)):
                if side is not None:
                    share[n] = f"{side.median / limit.ours.median:.0%} of it"
        rows.append(
            f"| {limit.scenario.removeprefix('limit: ')} | {_number(limit.ours.median)} | "
            + " | ".join(share)
            + " |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


def _save(fig: Any, path: Path) -> bool:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_throughput(results: Sequence[Result], path: Path) -> bool:
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.status == "ok" and r.unit == "MB/s" and r.ours]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(shown) + 1.5))
    for n, r in enumerate(shown):
        for offset, samples, color, label in (
            (-0.2, r.ours, "tab:blue", "imagebridge"),
            (0.2, r.peer, "tab:orange", "peer"),
        ):
            if samples is None:
                continue
            error = [[samples.median - samples.minimum], [samples.maximum - samples.median]]
            ax.barh(
                n + offset, samples.median, 0.38, xerr=error, color=color, label=label if n == 0 else None
            )
    ax.set_yticks(
        range(len(shown)), [f"{r.scenario}\n(peer: {r.peer_name or '—'})" for r in shown], fontsize=7
    )
    ax.invert_yaxis()
    ax.set_xlabel("MB/s (median, bars show min–max)")
    ax.set_title("Throughput")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _plot_latency(results: Sequence[Result], path: Path) -> bool:
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.status == "ok" and "percentiles" in r.extra]
    if not shown:
        return False
    columns = 3
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, shown, strict=False):
        for key, color, label in (
            ("ours", "tab:blue", "imagebridge"),
            ("peer", "tab:orange", r.peer_name or "peer"),
        ):
            values = r.extra["percentiles"].get(key)
            if values:
                ax.plot(
                    r.extra.get("percentile_points", [50, 75, 90, 95, 99]),
                    values,
                    "o-",
                    color=color,
                    label=label,
                )
        ax.set_title(r.scenario, fontsize=7)
        ax.set_xlabel("percentile", fontsize=7)
        ax.set_ylabel("ms", fontsize=7)
        ax.set_yscale("log")
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    return _save(fig, path)


def _plot_rss(results: Sequence[Result], path: Path) -> bool:
    import matplotlib.pyplot as plt

    shown = [r for r in results if r.status == "ok" and "series" in r.extra]
    if not shown:
        return False
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in shown:
        for key, color, label in (
            ("ours", "tab:blue", "imagebridge"),
            ("peer", "tab:orange", r.peer_name or "peer"),
        ):
            points = r.extra["series"].get(key)
            if points:
                ax.plot([t for t, _ in points], [mb for _, mb in points], color=color, label=label)
        ax.set_title(r.scenario)
    ax.set_xlabel("seconds since the request")
    ax.set_ylabel("RSS (MB)")
    ax.legend()
    return _save(fig, path)


def plots(results: Sequence[Result], directory: Path) -> list[Path]:
    """Write the PNG plots into ``directory``; returns those written (a plot with no data is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in (("throughput", _plot_throughput), ("latency", _plot_latency), ("rss", _plot_rss)):
        path = directory / f"{name}.png"
        if draw(results, path):
            written.append(path)
    return written


def render(results: Sequence[Result], meta: dict[str, Any], images: Sequence[Path], page: Path) -> str:
    """The Markdown page: machine and versions, method, rerun command, the table, limits and plots."""
    counts = {
        k: sum(1 for r in results if verdict(r).strip("*") == k)
        for k in ("met", "not met", "failed", "skipped")
    }
    machine = "\n".join(f"| {k} | {_cell(str(v))} |" for k, v in meta.items())
    limits = limits_table(results)
    pictures = "\n\n".join(f"![{p.stem}]({os.path.relpath(p, page.parent)})" for p in images)
    return f"""# Benchmarks

imagebridge measured against Orthanc (the Debian package, on the same machine, in the same run) and
against the machine's own limits, by the harness of issue 7. **This page is generated by
`bench/run`; do not edit it by hand.** Raw results: `bench/results/latest.json`.

Verdicts: {counts["met"]} targets met, {counts["not met"]} not met; {counts["failed"]} scenarios failed and
{counts["skipped"]} were skipped (each is listed with its reason).

## How to rerun

```
{COMMAND}
.venv/bin/python bench/run --only "QIDO"  # one group of scenarios while developing
```

`bench/run` installs Debian's `orthanc orthanc-dicomweb` when it runs as root and they are missing
(`scripts/system-deps.sh`), starts PostgreSQL if it is installed (`scripts/services.sh`), generates
the data sets deterministically into `bench/work/` (cached by their parameters), starts every server
itself on 127.0.0.1 and stops each by its PID at the end, also on failure or Ctrl-C. A full run
rewrites this page, `docs/benchmarks/*.png` and `bench/results/`; `--quick` (smaller data, fewer
repeats, under 5 minutes) writes its JSON under `bench/results/` and its page under `bench/work/report/`.

## Method

* **Same client, both sides.** One httpx client (bench/client.py) measures every server; bodies are
  streamed and counted, never buffered. imagebridge runs as real processes (`imagebridge ehr serve`,
  `imagebridge imaging serve`); it is read through its gate with a valid token (a patient-context
  token for the CT studies, a backend token pre-authorized for a Group of every patient for QIDO and
  the samples), Orthanc directly without authentication, as issues 5 and 6 specify. The EHR's
  tokens/s and introspections/s, which have no peer, are driven by a minimal HTTP/1.1 client
  (`raw_throughput` in bench/load.py: requests encoded beforehand, only status and length parsed)
  so that the client's CPU does not cap the rate; each note gives client and server CPU.
* **Alternation.** Each scenario runs A B A B …: one untimed warm-up pair (which also warms the
  gate's cache), then the repeats. Reported: the median, min and max over the repeats; the ratio is
  imagebridge / peer on medians. Latency samples are each the median of a batch of sequential
  requests; p95 and percentile curves use every timed request.
* **Noise.** This is a shared 2-core virtual machine on which other work runs: absolute numbers
  drift between runs, which is why targets are ratios against a peer measured in the same minute.
  The min–max columns show how noisy each measurement was. The client runs on the same cores as the
  servers, so the fastest server is partly limited by the client.
* **Orthanc's settings.** Orthanc {meta.get("Orthanc", "?")}: `StorageCompression` off, authentication
  off, HTTP tracing off, 50 HTTP threads (its default), its SQLite index, DICOMweb plugin defaults
  (`StudiesMetadata`/`SeriesMetadata` = `Full`). imagebridge: defaults, SQLite + a folder, one worker,
  except the PostgreSQL + S3 (SeaweedFS) scenarios, which use `--workers 2` and whose two
  databases are `ANALYZE`d once loaded (this machine's PostgreSQL runs with autovacuum off, which
  would otherwise do it). Backend tokens of the benchmark's EHR live 2 h (not 300 s) so a run never
  outlives them.
* **Data.** A CT study of 512 x 512 slices (>= 390 instances, >= 200 MB; smaller in `--quick`), a CT
  study of 1024 x 1024 slices (>= 1 GB), 10,000 one-image studies across 1,000 patients and pydicom's
  compressed sample files, stored into both servers by STOW-RS (the ingest scenarios time it).

## Machine and versions

| | |
|---|---|
{machine}

## Results

{table(results)}

## Distance from the machine's limits

{limits or "Not measured in this run."}

## Plots

{pictures or "No plots in this run."}
"""
