"""The benchmark harness's plumbing (issue 7 "Honesty"): alternation, verdicts in the report, the
limits table, and the study copies the ingest scenario stores. No servers and no timing here."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
from bench.context import alternate
from bench.data import Instance, variant
from bench.load import encode_post, raw_throughput
from bench.report import limits_table, render, table, verdict
from bench.result import Better, Result, Samples, Target, failed

from imagebridge.apps.synthetic import PatientSpec, StudySpec, dataset_bytes, generate_study


def test_alternate_runs_a_then_b_after_untimed_warm_ups() -> None:
    calls: list[str] = []

    def side(name: str, values: list[float]) -> Callable[[], float]:
        def measure() -> float:
            calls.append(name)
            return values.pop(0)

        return measure

    ours, peer = alternate(side("A", [9, 1, 2, 3]), side("B", [9, 10, 20, 30]), repeats=3, warmup=1)
    assert calls == ["A", "B"] * 4
    assert ours.values == (1, 2, 3)  # the warm-up's 9 is not a sample
    assert peer.values == (10, 20, 30)


def _result(
    ours: list[float], peer: list[float] | None, target: Target | None, better: Better = "higher"
) -> Result:
    return Result(
        "scenario",
        "throughput",
        "MB/s",
        better,
        Samples.of(ours),
        Samples.of(peer) if peer else None,
        "Orthanc",
        target,
    )


def test_verdicts_follow_the_targets_direction_and_status() -> None:
    at_least = Target(5, "ours >= peer", "ratio", 1.0)
    assert verdict(_result([100, 110, 120], [90, 100, 95], at_least)) == "**met**"
    assert verdict(_result([50, 60, 70], [90, 100, 95], at_least)) == "**not met**"
    at_most = Target(5, "ours/peer <= 0.2", "ratio", 0.2)
    assert verdict(_result([10, 11, 12], [100, 100, 100], at_most, "lower")) == "**met**"
    assert verdict(_result([30, 31, 32], [100, 100, 100], at_most, "lower")) == "**not met**"
    assert (
        verdict(_result([18, 19, 25], None, Target(5, "p50 <= 20 ms", "absolute", 20.0), "lower"))
        == "**met**"
    )
    assert verdict(_result([1, 2, 3], [1, 2, 3], None)) == "—"
    assert verdict(_result([1, 2, 3], None, at_least)) == "no peer"
    assert verdict(failed("scenario", "throughput", "MB/s", "higher", "Orthanc did not start")) == "failed"


def test_table_has_a_row_per_result_with_medians_ranges_ratio_and_reasons() -> None:
    results = [
        _result([100, 110, 120], [50, 55, 60], Target(5, "ours >= peer", "ratio", 1.0)),
        failed("broken scenario", "latency", "ms", "lower", "Orthanc answered 500"),
        Result("skipped scenario", "latency", "ms", "lower", status="skipped", note="no PatientID"),
    ]
    rows = table(results).splitlines()
    assert rows[2].startswith("| scenario | throughput")
    assert "110 (100–120)" in rows[2]
    assert "55.0 (50.0–60.0)" in rows[2]
    assert "| 2.00 |" in rows[2]
    assert rows[2].endswith("| **met** |")
    assert "broken scenario — Orthanc answered 500" in rows[3]
    assert rows[3].endswith("| failed |")
    assert rows[4].endswith("| skipped |")


def test_limits_table_says_how_far_each_server_is_from_the_machine() -> None:
    served = Result(
        "WADO-RS full study", "throughput", "MB/s", "higher", Samples.of([400]), Samples.of([200])
    )
    limit = Result(
        "limit: page cache",
        "throughput",
        "MB/s",
        "higher",
        Samples.of([800]),
        extra={"limit_for": served.scenario},
    )
    assert "| page cache | 800 | 50% of it | 25% of it |" in limits_table([served, limit])


def test_the_page_counts_verdicts_and_names_the_machine(tmp_path: Path) -> None:
    results = [
        _result([100], [50], Target(5, "x", "ratio", 1.0)),
        _result([10], [50], Target(5, "y", "ratio", 1.0)),
        failed("z", "m", "", "higher", "boom"),
    ]
    page = render(results, {"CPU": "Test CPU", "mode": "quick"}, [], tmp_path / "benchmarks.md")
    assert "1 targets met, 1 not met; 1 scenarios failed" in page
    assert "| CPU | Test CPU |" in page


def test_a_study_variant_has_new_uids_and_the_same_length(tmp_path: Path) -> None:
    spec = StudySpec(
        PatientSpec("P1", "Doe^J", "19800101", "F"), "CT", "t", "CHEST", "20240101", rows=16, columns=16
    )
    ds = next(generate_study(spec))
    data = dataset_bytes(ds)
    instance = Instance("x.dcm", len(data), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    copy = variant(instance, data, 7)
    assert variant(instance, data, 0) == data
    assert len(copy) == len(data)
    path = tmp_path / "copy.dcm"
    path.write_bytes(copy)
    again = pydicom.dcmread(path)
    assert again.StudyInstanceUID == ds.StudyInstanceUID[:-4] + "0007"
    assert (
        again.SOPInstanceUID == again.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID[:-4] + "0007"
    )
    assert again.PixelData == ds.PixelData


class _Echo(BaseHTTPRequestHandler):
    """Keeps connections alive; answers each POST with its body, 201 when the body asks for it."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201 if b"created" in body else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_raw_throughput_counts_every_answer_over_kept_alive_connections() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/auth/token"
        requests = [
            encode_post(url, {"n": str(n), "kind": "created" if n % 5 == 0 else "ok"}, {"X-Test": "1"})
            for n in range(50)
        ]
        load = raw_throughput(url, requests, concurrency=4)
    finally:
        server.shutdown()
        server.server_close()
    assert load.requests == 46  # the first request of each connection is not timed
    assert load.statuses == {201: 10, 200: 40}
    assert load.rate > 0
    assert load.server_cpu is None
