"""Imaging scenarios of the benchmark: imagebridge against Orthanc, and against the machine's limits
(issue 7 "Scenarios"; targets from issue 5 and issue 6 "Performance").

imagebridge is read through its gate with a valid token (warm cache: every side gets an untimed
warm-up first); Orthanc is read directly without authentication. Each scenario alternates the two
sides A B A B … with the same client code (bench/client.py) and reports medians, min and max.
"""

from __future__ import annotations

import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydicom
from bench.client import (
    FRAMES_ACCEPT,
    JSON_ACCEPT,
    WADO_ACCEPT,
    BadAnswer,
    RssSampler,
    burst,
    concurrently,
    fetch,
    latency_batch,
)
from bench.context import BenchContext, alternate
from bench.data import CT_PATIENT, FULL, QUICK, DataSet, big_spec, generated, huge_spec, samples, small_specs
from bench.load import percentile
from bench.result import Result, Samples, Target, failed
from bench.servers import (
    Ours,
    Side,
    imagebridge,
    orthanc_direct,
    static_server,
    stow,
    stow_parallel,
    sync_upstream,
)
from tests.pg import analyze, temporary_database
from tests.s3 import seaweedfs

from imagebridge.apps.stack import free_port
from imagebridge.apps.synthetic import PatientSpec

ORTHANC = "Orthanc (direct, no auth)"
SQLITE = "imagebridge SQLite + folder, 1 worker"
SCALED = " — PostgreSQL + S3, 2 workers"
PERCENTILES = (50, 75, 90, 95, 99)
CLIENTS = 16
MEMORY_CLIENTS = 8
#: Concurrent STOW-RS clients loading the small studies (both servers).
STOW_CONNECTIONS = 4
#: At most this many ``/frames/1`` requests per concurrency run.
FRAME_REQUESTS = 160


@dataclass
class Bench:
    """The running servers and data sets shared by the scenarios, and the results so far."""

    ctx: BenchContext
    ours: Ours
    peer: Side
    big: DataSet
    results: list[Result] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=600))
    variants: int = 0  # study variants stored by the ingest scenario
    expected: int = 0  # studies stored in ``ours`` whose patient the EHR knows (so they are published)

    def store(self, data: DataSet) -> None:
        """STOW-RS ``data`` into both servers, untimed (the EHR knows every patient of it)."""
        self.ours.fresh()
        for side in (self.ours.side, self.peer):
            stow(self.http, side, data)
        self.expected += len(data.studies)

    @property
    def batch(self) -> int:
        """Requests per latency sample (each sample is their median)."""
        return 3 if self.ctx.quick else 5

    def run(self, name: str, scenario: Callable[[], None]) -> None:
        """Run ``scenario`` if ``--only`` selects it (with backend tokens good for the next two
        minutes at least); a failure becomes a failed Result."""
        if not self.ctx.wants(name):
            return
        self.ctx.say(f"  {name}")
        try:
            self.ours.fresh()
            scenario()
        except Exception as exc:
            self.results.append(_failure(name, exc))

    def pair(
        self, a: Callable[[], float], b: Callable[[], float], repeats: int = 0
    ) -> tuple[Samples, Samples]:
        return alternate(a, b, repeats or self.ctx.repeats)


def _failure(name: str, exc: Exception) -> Result:
    return failed(name, "—", "", "higher", f"{type(exc).__name__}: {exc}"[:500])


def _refused(exc: BadAnswer) -> str:
    return f"the peer does not serve this (it answered {exc.status}): imagebridge alone"


def _study_url(side: Side, uid: str) -> str:
    return f"{side.base}/studies/{uid}"


def _instance_path(data: DataSet, index: int) -> str:
    i = data.instances[index]
    return f"studies/{i.study}/series/{i.series}/instances/{i.sop}"


# Scenarios.


def ingest(b: Bench) -> None:
    """STOW-RS of the big study, a fresh copy (new UIDs) per repeat (issue 5: ingest >= Orthanc)."""
    seconds: dict[str, list[float]] = {"ours": [], "peer": []}

    def one(side: Side, key: str) -> Callable[[], float]:
        def measure() -> float:
            if key == "ours":
                b.variants += 1
                b.expected += 1
            sent, took = stow(b.http, side, b.big, b.variants)
            seconds[key].append(took)
            return sent / 1e6 / took

        return measure

    ours, peer = alternate(one(b.ours.side, "ours"), one(b.peer, "peer"), b.ctx.repeats, warmup=0)
    count = len(b.big.instances)
    rates = [Samples.of([count / took for took in seconds[k]]) for k in ("ours", "peer")]
    name = "ingest: STOW-RS of the big study"
    b.results += [
        Result(
            name,
            "throughput",
            "MB/s",
            "higher",
            ours,
            peer,
            ORTHANC,
            Target(5, "STOW-RS ingest throughput >= Orthanc's", "ratio", 1.0),
            note=f"{count} instances, {b.big.bytes / 1e6:.0f} MB per repeat, new UIDs each time",
        ),
        Result(name, "instances", "inst/s", "higher", rates[0], rates[1], ORTHANC),
    ]


def _retrieval(
    b: Bench, uid: str, ttfb: dict[str, list[float]], side: Side, key: str, auth: dict[str, str], size: int
) -> Callable[[], float]:
    """A full-study WADO-RS retrieval: MB/s, its time to first byte appended to ``ttfb[key]``."""

    def measure() -> float:
        got = fetch(b.http, _study_url(side, uid), {**auth, "Accept": WADO_ACCEPT})
        if got.size < size:
            raise BadAnswer(f"{side.name} sent {got.size} bytes of a {size}-byte study")
        ttfb[key].append(got.ttfb * 1000)
        return got.mb_per_s

    return measure


def _full_study(b: Bench, name: str, ours: Side, target: Target, note: str) -> None:
    """Full-study throughput and time to first byte of the big study: ``ours`` vs Orthanc direct."""
    uid = b.big.studies[0]
    ttfb: dict[str, list[float]] = {"ours": [], "peer": []}
    a = _retrieval(b, uid, ttfb, ours, "ours", ours.read, b.big.bytes)
    c = _retrieval(b, uid, ttfb, b.peer, "peer", {}, b.big.bytes)
    ours_s, peer_s = b.pair(a, c)
    b.results += [
        Result(name, "throughput", "MB/s", "higher", ours_s, peer_s, ORTHANC, target, note=note),
        Result(
            name,
            "time to first byte",
            "ms",
            "lower",
            Samples.of(ttfb["ours"][1:]),  # not the warm-up
            Samples.of(ttfb["peer"][1:]),
            ORTHANC,
            Target(5, "time to first byte <= Orthanc's", "ratio", 1.0) if target.issue == 5 else None,
        ),
    ]


def wado_full(b: Bench) -> None:
    _full_study(
        b,
        "WADO-RS full study (big)",
        b.ours.side,
        Target(5, "full-study throughput through the gate >= 1.0x Orthanc direct", "ratio", 1.0),
        f"{b.big.bytes / 1e6:.0f} MB, {len(b.big.instances)} instances; ours with a patient token",
    )


def limits(b: Bench) -> None:
    """The same bytes from the page cache (``cat``) and from Python's http.server over loopback."""
    joined = b.big.directory / "all.bin"
    if not joined.exists():
        with joined.open("wb") as out:
            for path in b.big.paths():
                out.write(path.read_bytes())
    size = joined.stat().st_size

    def cat() -> float:
        start = time.perf_counter()
        with subprocess.Popen(["cat", *map(str, b.big.paths())], stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            while process.stdout.read(1 << 20):
                pass
        return size / 1e6 / (time.perf_counter() - start)

    port = free_port()
    with static_server(b.ctx, b.big.directory, port):
        url = f"http://127.0.0.1:{port}/all.bin"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.head(url)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        cats, served = b.pair(cat, lambda: fetch(b.http, url, {}).mb_per_s)
    for name, measured in (
        ("page cache (cat of the files)", cats),
        ("Python http.server over loopback", served),
    ):
        b.results.append(
            Result(
                f"limit: {name}",
                "throughput",
                "MB/s",
                "higher",
                measured,
                note=f"the big study's {size / 1e6:.0f} MB; the machine's ceiling, not imagebridge",
                extra={"limit_for": "WADO-RS full study (big)"},
            )
        )


Auth = tuple[Side, dict[str, str]]


def latency(
    b: Bench,
    name: str,
    path: str,
    accept: str,
    *,
    ours: Auth | None = None,
    peer: Auth | None = None,
    peer_name: str = ORTHANC,
    target: Target | None = None,
) -> None:
    """Latency of ``GET <base>/<path>`` on both sides: each sample is the median of ``batch``
    sequential requests; p95 and a percentile curve over every timed request go to ``extra``."""
    ours_side, ours_auth = ours or (b.ours.side, b.ours.side.read)
    peer_side, peer_auth = peer or (b.peer, {})
    every: dict[str, list[float]] = {"ours": [], "peer": []}

    def one(side: Side, key: str, auth: dict[str, str]) -> Callable[[], float]:
        url = f"{side.base}/{path}"
        return lambda: latency_batch(b.http, url, {**auth, "Accept": accept}, b.batch, every[key])

    a, c = one(ours_side, "ours", ours_auth), one(peer_side, "peer", peer_auth)
    try:
        c()
    except BadAnswer as exc:  # the peer does not serve it: ours alone, and the report says so
        a()
        alone = Samples.of([a() for _ in range(b.ctx.repeats)])
        b.results.append(
            Result(name, "latency p50", "ms", "lower", alone, None, peer_name, target, note=_refused(exc))
        )
        return
    ours_s, peer_s = b.pair(a, c)
    timed = {k: v[len(v) - b.ctx.repeats * b.batch :] for k, v in every.items()}  # not the warm-ups
    rows = {}
    if accept == JSON_ACCEPT:  # the same answer on both sides? (row counts, shown in the report)
        for key, (side, auth) in (("ours", (ours_side, ours_auth)), ("peer", (peer_side, peer_auth))):
            body = b.http.get(f"{side.base}/{path}", headers={**auth, "Accept": accept}).json()
            rows[key] = len(body) if isinstance(body, list) else 1
    b.results.append(
        Result(
            name,
            "latency p50",
            "ms",
            "lower",
            ours_s,
            peer_s,
            peer_name,
            target,
            note=f"rows: {rows['ours']} (imagebridge), {rows['peer']} (peer)" if rows else "",
            extra={
                "rows": rows,
                "p95": {k: percentile(v, 95) for k, v in timed.items()},
                "percentiles": {k: [percentile(v, q) for q in PERCENTILES] for k, v in timed.items()},
                "percentile_points": list(PERCENTILES),
            },
        )
    )


def wado_small(b: Bench) -> None:
    uid = b.big.studies[0]
    middle = _instance_path(b.big, len(b.big.instances) // 2)
    series = b.big.instances[0].series
    study_target = Target(5, "study metadata >= 5x faster than Orthanc (ratio <= 0.2)", "ratio", 0.2)
    rendered_target = Target(5, "/rendered JPEG p50 <= Orthanc's", "ratio", 1.0)
    for name, path, accept, target in (
        ("WADO-RS study /metadata (big)", f"studies/{uid}/metadata", JSON_ACCEPT, study_target),
        ("WADO-RS series /metadata (big)", f"studies/{uid}/series/{series}/metadata", JSON_ACCEPT, None),
        ("WADO-RS /frames/1", f"{middle}/frames/1", FRAMES_ACCEPT, None),
        ("WADO-RS /rendered JPEG", f"{middle}/rendered", "image/jpeg", rendered_target),
        ("WADO-RS /rendered PNG", f"{middle}/rendered", "image/png", None),
        ("WADO-RS /thumbnail", f"{middle}/thumbnail", "image/jpeg", None),
    ):
        b.run(name, functools.partial(latency, b, name, path, accept, target=target))


def compressed(b: Bench, data: DataSet) -> None:
    """``/rendered`` JPEG of each compressed sample (decoding JPEG 2000, JPEG-LS, RLE, JPEG)."""
    for index, instance in enumerate(data.instances):
        ds = pydicom.dcmread(data.directory / instance.path, stop_before_pixels=True)
        syntax = ds.file_meta.TransferSyntaxUID
        if not syntax.is_compressed:
            continue
        name = f"/rendered JPEG of {instance.path} ({syntax.name})"
        path = f"{_instance_path(data, index)}/rendered"
        auth = (b.ours.side, b.ours.side.search)
        b.run(name, functools.partial(latency, b, name, path, "image/jpeg", ours=auth))


def concurrency(b: Bench) -> None:
    """16 clients retrieving ``/frames/1`` of the big study's instances (at most ``FRAME_REQUESTS``)."""
    count = min(len(b.big.instances), FRAME_REQUESTS)
    paths = [f"{_instance_path(b.big, i)}/frames/1" for i in range(count)]
    p95: dict[str, list[float]] = {"ours": [], "peer": []}

    def one(side: Side, key: str, auth: dict[str, str]) -> Callable[[], float]:
        def measure() -> float:
            done = burst([f"{side.base}/{p}" for p in paths], {**auth, "Accept": FRAMES_ACCEPT}, CLIENTS)
            p95[key].append(percentile(done.latencies, 95))
            return done.rate

        return measure

    ours, peer = b.pair(one(b.ours.side, "ours", b.ours.side.read), one(b.peer, "peer", {}))
    name = f"concurrency: {CLIENTS} clients, /frames/1 of one study"
    b.results += [
        Result(
            name, "throughput", "req/s", "higher", ours, peer, ORTHANC, note=f"{len(paths)} requests per run"
        ),
        Result(
            name,
            "latency p95",
            "ms",
            "lower",
            Samples.of(p95["ours"][1:]),
            Samples.of(p95["peer"][1:]),
            ORTHANC,
        ),
    ]


def memory(b: Bench, huge: DataSet) -> None:
    """Peak RSS of each server while it streams the >= 1 GB study, and with 8 concurrent retrievals
    of the big one; the RSS series of the last 1 GB stream is kept for the plot."""
    series: dict[str, list[tuple[float, int]]] = {}
    growth: dict[str, list[float]] = {"ours": [], "peer": []}

    def stream(side: Side, key: str, auth: dict[str, str]) -> Callable[[], float]:
        def measure() -> float:
            with RssSampler(side.rss) as sampler:
                got = fetch(b.http, _study_url(side, huge.studies[0]), {**auth, "Accept": WADO_ACCEPT})
            if got.size < huge.bytes:
                raise BadAnswer(f"{side.name} sent {got.size} of {huge.bytes} bytes")
            series[key] = sampler.series
            growth[key].append((sampler.peak - sampler.series[0][1]) / 1e6)
            return sampler.peak / 1e6

        return measure

    def parallel(side: Side, auth: dict[str, str]) -> Callable[[], float]:
        def client() -> None:
            with httpx.Client(timeout=600) as http:
                fetch(http, _study_url(side, b.big.studies[0]), {**auth, "Accept": WADO_ACCEPT})

        def measure() -> float:
            with RssSampler(side.rss) as sampler:
                concurrently([client] * MEMORY_CLIENTS)
            return sampler.peak / 1e6

        return measure

    repeats = 1 if b.ctx.quick else 3
    ours, peer = alternate(
        stream(b.ours.side, "ours", b.ours.side.read), stream(b.peer, "peer", {}), repeats, warmup=0
    )
    gb = f"{huge.bytes / 1e9:.2f} GB"

    def rss(name: str, metric: str, ours: Samples, peer: Samples, note: str = "", **extra: Any) -> None:
        b.results.append(Result(name, metric, "MB", "lower", ours, peer, ORTHANC, note=note, extra=extra))

    rss(
        f"memory: peak RSS streaming the {gb} study",
        "peak RSS",
        ours,
        peer,
        "sum over the server's processes, sampled every 50 ms",
        series={k: [(t, value / 1e6) for t, value in v] for k, v in series.items()},
    )
    rss(
        f"memory: RSS growth streaming the {gb} study",
        "peak RSS − RSS before the request",
        Samples.of(growth["ours"]),
        Samples.of(growth["peer"]),
        "what the stream itself costs (Orthanc's RSS before it includes what earlier ingest left)",
    )
    ours, peer = alternate(parallel(b.ours.side, b.ours.side.read), parallel(b.peer, {}), repeats, warmup=0)
    rss(f"memory: peak RSS, {MEMORY_CLIENTS} concurrent retrievals of the big study", "peak RSS", ours, peer)


def proxy(b: Bench) -> None:
    """imagebridge in proxy mode (``--upstream``) in front of the same Orthanc, vs Orthanc direct."""
    with imagebridge(
        b.ctx,
        "proxy",
        [CT_PATIENT],
        upstream_url=b.peer.base,
        extra_imaging_env={"IMAGEBRIDGE_IMAGING_UPSTREAM_SYNC_INTERVAL": "86400"},
    ) as proxied:
        sync_upstream(proxied.stack)
        proxied.wait_published(1, identifier=f"urn:dicom:uid|urn:oid:{b.big.studies[0]}")
        _full_study(
            b,
            "proxy mode: WADO-RS full study (big), imagebridge in front of Orthanc",
            proxied.side,
            Target(6, "proxy-mode full-study throughput >= 0.8x Orthanc direct", "ratio", 0.8),
            "imagebridge --upstream <that Orthanc>, patient token; Orthanc direct without auth",
        )


def load_small(b: Bench, small: DataSet) -> None:
    """STOW-RS of the small studies into both servers over 4 connections each (one run each)."""
    count = len(small.instances)
    b.ours.fresh()
    rates = [count / stow_parallel(side, small, STOW_CONNECTIONS) for side in (b.ours.side, b.peer)]
    b.expected += len(small.studies)
    b.results.append(
        Result(
            f"ingest: STOW-RS of {len(small.studies):,} small studies",
            "instances",
            "inst/s",
            "higher",
            Samples.of(rates[:1]),
            Samples.of(rates[1:]),
            ORTHANC,
            note=f"one run each, not alternated; one 64x64 instance per study, {STOW_CONNECTIONS} clients",
        )
    )


def qido_queries(patient: str, big_uid: str) -> list[tuple[str, str, Target | None]]:
    limit = Target(5, "QIDO /studies?limit=100 at 10,000 studies p50 <= 20 ms", "absolute", 20.0)
    return [
        ("QIDO-RS /studies?limit=100", "studies?limit=100", limit),
        ("QIDO-RS /studies by PatientID", f"studies?PatientID={patient}", None),
        ("QIDO-RS /studies by date range", "studies?StudyDate=20200101-20200331", None),
        ("QIDO-RS /studies fuzzy PatientName", "studies?PatientName=garc*&fuzzymatching=true", None),
        ("QIDO-RS /studies includefield=all", "studies?includefield=all&limit=100", None),
        ("QIDO-RS series of the big study", f"studies/{big_uid}/series", None),
        ("QIDO-RS instances of the big study", f"studies/{big_uid}/instances", None),
    ]


def qido(b: Bench, small: DataSet, patient: str, scaled: Ours | None = None) -> None:
    """QIDO-RS at ``small``'s scale; against Orthanc, or (``scaled``) our PostgreSQL stack against
    our SQLite one. imagebridge is asked with the reader's token (a Group of every patient)."""
    suffix = f" ({len(small.studies):,} studies)" + (SCALED if scaled else "")
    for name, path, target in qido_queries(patient, b.big.studies[0]):
        if not b.ctx.wants(name + suffix):
            continue
        for stack in (b.ours, scaled):
            if stack is not None:
                stack.fresh()
        ours = (scaled or b.ours).side
        peer = (b.ours.side, b.ours.side.search) if scaled else None
        b.run(
            name + suffix,
            functools.partial(
                latency,
                b,
                name + suffix,
                path,
                JSON_ACCEPT,
                ours=(ours, ours.search),
                peer=peer,
                peer_name=SQLITE if scaled else ORTHANC,
                target=None if scaled else target,
            ),
        )


@contextmanager
def scaled_stack(b: Bench, patients: list[PatientSpec]) -> Iterator[tuple[Ours, tuple[str, str]]]:
    """imagebridge on PostgreSQL + S3 (SeaweedFS) with ``--workers 2``, and its two databases' URLs."""
    with (
        seaweedfs(b.ctx.scratch("seaweedfs")) as s3,
        temporary_database("bench_ehr") as ehr_db,
        temporary_database("bench_img") as imaging_db,
    ):
        bucket = s3.new_bucket()
        with imagebridge(
            b.ctx,
            "postgres",
            patients,
            ("--workers", "2"),
            ehr_database_url=ehr_db,
            imaging_database_url=imaging_db,
            extra_imaging_env=s3.imaging_env(bucket),
        ) as ours:
            yield ours, (ehr_db, imaging_db)


def scale(b: Bench, small: DataSet, patients: list[PatientSpec]) -> None:
    """The WADO-RS and QIDO scenarios on PostgreSQL + S3 with 2 workers, next to SQLite + folder."""
    with scaled_stack(b, patients) as (pg, databases):
        for data in (b.big, small):
            pg.fresh()
            seconds = stow_parallel(pg.side, data, STOW_CONNECTIONS)
            b.results.append(
                Result(
                    f"ingest: STOW-RS of the {data.name} data set{SCALED}",
                    "instances",
                    "inst/s",
                    "higher",
                    Samples.of([len(data.instances) / seconds]),
                    note=f"one run, {STOW_CONNECTIONS} clients",
                )
            )
        pg.wait_published(1 + len(small.studies))
        for url in databases:  # as autovacuum would after a bulk load (it is off on this machine)
            analyze(url)
        uid = b.big.studies[0]

        def one(side: Side) -> Callable[[], float]:
            return lambda: fetch(b.http, _study_url(side, uid), {**side.read, "Accept": WADO_ACCEPT}).mb_per_s

        def full_study() -> None:
            ours, peer = b.pair(one(pg.side), one(b.ours.side))
            b.results.append(Result(name, "throughput", "MB/s", "higher", ours, peer, SQLITE))

        name = f"WADO-RS full study (big){SCALED}"
        b.run(name, full_study)
        metadata = f"WADO-RS study /metadata (big){SCALED}"
        b.run(
            metadata,
            functools.partial(
                latency,
                b,
                metadata,
                f"studies/{uid}/metadata",
                JSON_ACCEPT,
                ours=(pg.side, pg.side.read),
                peer=(b.ours.side, b.ours.side.read),
                peer_name=SQLITE,
            ),
        )
        qido(b, small, patients[len(patients) // 2].patient_id, scaled=pg)


def with_patient(data: DataSet) -> tuple[DataSet, list[PatientSpec], list[Result]]:
    """The samples that have a PatientID (imagebridge refuses the others: it could never publish
    them to the EHR), their patients, and a skipped Result for each sample left out."""
    kept, patients, skipped = [], {}, []
    for instance in data.instances:
        ds = pydicom.dcmread(data.directory / instance.path, stop_before_pixels=True)
        if ds.get("PatientID"):
            kept.append(instance)
            patients[ds.PatientID] = PatientSpec(
                ds.PatientID, str(ds.get("PatientName", "")), "19700101", "O"
            )
        else:
            reason = "the sample has no PatientID: imagebridge refuses it at STOW-RS (0xC000), by design"
            name = f"/rendered JPEG of {instance.path}"
            skipped.append(Result(name, "latency p50", "ms", "lower", status="skipped", note=reason))
    return DataSet(data.name, data.directory, tuple(kept)), list(patients.values()), skipped


def measure(ctx: BenchContext) -> list[Result]:
    """Every imaging scenario, against one Orthanc and one imagebridge on SQLite + folder (and, for
    proxy mode and scale, the further imagebridge stacks they need)."""
    sizes = QUICK if ctx.quick else FULL
    ctx.say("generating (or reusing) the data sets")
    big = generated(ctx.work, "big", [big_spec(sizes.big_slices)])
    huge = generated(ctx.work, "huge", [huge_spec(sizes.huge_slices)])
    small = generated(ctx.work, "small", small_specs(sizes.patients, sizes.studies_per_patient))
    sample, sample_patients, skipped = with_patient(samples(ctx.work))
    small_patients = [s.patient for s in small_specs(sizes.patients, 1)]
    patients = [CT_PATIENT, *sample_patients, *small_patients]
    with orthanc_direct(ctx) as peer, imagebridge(ctx, "sqlite", patients) as ours:
        system = httpx.get(f"{peer.base.removesuffix('/dicom-web')}/system").json()
        ctx.meta["Orthanc"] = f"{system['Version']} (DICOMweb plugin from Debian)"
        b = Bench(ctx, ours, peer, big, [r for r in skipped if ctx.wants(r.scenario)])
        try:
            ctx.say("loading the big study, the 1 GB study and the samples into both")
            b.store(big)
            b.run("ingest: STOW-RS of the big study", lambda: ingest(b))
            b.store(huge)
            b.store(sample)
            ctx.say(f"published after {ours.wait_published(b.expected):.0f} s more")
            b.run("WADO-RS full study (big)", lambda: wado_full(b))
            b.run("limit", lambda: limits(b))
            wado_small(b)
            compressed(b, sample)
            b.run("concurrency", lambda: concurrency(b))
            b.run("memory", lambda: memory(b, huge))
            b.run("proxy mode", lambda: proxy(b))
            if any(ctx.wants(n) for n in ("small studies", "QIDO", "PostgreSQL")):
                ctx.say(f"loading {len(small.studies):,} small studies into both")
                load_small(b, small)
                ctx.say(f"published after {ours.wait_published(b.expected):.0f} s more")
                middle = small_patients[len(small_patients) // 2].patient_id
                qido(b, small, middle)
                if ctx.wants("PostgreSQL"):
                    b.run("PostgreSQL + S3", lambda: scale(b, small, [CT_PATIENT, *small_patients]))
        except Exception as exc:  # a step every later scenario needs: keep what was measured
            b.results.append(_failure("imaging scenarios", exc))
        finally:
            b.http.close()
    return b.results
