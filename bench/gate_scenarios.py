"""Gate scenarios of the benchmark (issue 7 "Gate overhead"; targets from issue 6 "Performance").

What the gate adds to a request of ``/frames/1`` of one small instance, with a warm introspection
cache (the token was introspected before) and with a cold one (a new token per request: one
introspection round trip to the EHR each), and requests/s of ``/frames/1`` with and without it.

Without the gate: the imaging system has no way to serve without its gate (ARCHITECTURE.md
invariant 2; there is no switch and there must not be one). So this module builds, for the
benchmark only, a second imaging process from the very same application and data whose gate
admits every request at once and whose audit writes nothing (:func:`serve_ungated`), and runs it
next to the real one. Both answer the same route with the same code below the gate; the
difference between the two, measured in alternation with the same client, is the gate's cost:
admission (token cache lookup or introspection, audience and scope checks), the per-study decision
and the audit record committed before the response.

    .venv/bin/python bench/gate_scenarios.py [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx

if not __package__:  # run as a script: make ``bench.*`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import BenchContext, Measure, alternate
from bench.load import latencies, percentile, throughput
from bench.result import Result, Samples, Target, failed
from bench.standalone import run

from imagebridge.apps.seed import seed_all
from imagebridge.apps.stack import LocalStack, ServiceProcess, free_port, start_service
from imagebridge.common import db
from imagebridge.ehr.fhir.store import Query, TokenCriterion
from imagebridge.ehr.smart.grants import Grant, GrantStore

PATIENT_SCOPE = "launch/patient patient/ImagingStudy.rs"
ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
CONNECTIONS = 8
#: Untimed A B pairs before the measured ones.
WARMUP = 1
#: The demo studies at a tiny image scale: one small CT instance is enough to fetch frames of.
SCALE = 0.05


@dataclass
class GateUnderTest:
    stack: LocalStack
    ungated: ServiceProcess
    frames_path: str  # /dicom-web/studies/…/frames/1
    patient: str
    tokens: Callable[[int], list[str]]  # n new patient-context tokens, issued at the EHR

    def url(self, gated: bool) -> str:
        service = self.stack.imaging if gated else self.ungated
        assert service is not None
        return f"{service.url}{self.frames_path}"

    @property
    def pid(self) -> int:
        assert self.stack.imaging is not None
        return self.stack.imaging.process.pid


def _issue(stack: LocalStack, patient: str) -> Callable[[int], list[str]]:
    def issue(n: int) -> list[str]:
        async def run() -> list[str]:
            engine = db.create_engine(stack.ehr_settings.resolved_database_url, pool_size=1)
            try:
                grants, now = GrantStore(engine), time.time()
                grant = Grant(
                    "demo-app",
                    PATIENT_SCOPE,
                    now + 3600,
                    now,
                    patient=patient,
                    fhir_user=f"Patient/{patient}",
                )
                return [await grants.issue(grant) for _ in range(n)]
            finally:
                await engine.dispose()

        return asyncio.run(run())

    return issue


def _patient_of(stack: LocalStack, study_uid: str) -> str:
    from imagebridge.ehr.admin import Admin

    async def run() -> str:
        admin = Admin(stack.ehr_settings)
        try:
            query = Query(
                "ImagingStudy", [TokenCriterion("identifier", (("urn:dicom:uid", f"urn:oid:{study_uid}"),))]
            )
            found, _ = await admin.store.search(query)
            return str(found[0]["subject"]["reference"]).removeprefix("Patient/")
        finally:
            await admin.close()

    return asyncio.run(run())


@contextmanager
def gate_under_test(ctx: BenchContext) -> Iterator[GateUnderTest]:
    """The demo stack (EHR + imaging, SQLite + folder) and the bench-only ungated imaging process."""
    with ctx.local_stack("gate") as stack:
        seeded = seed_all(stack, scale=SCALE)
        study = next(u for u in seeded.study_uids.values() if u not in seeded.sensitive)
        patient = _patient_of(stack, study)
        issue = _issue(stack, patient)
        (token,) = issue(1)
        found = httpx.get(
            f"{stack.imaging_settings.dicomweb_base}/studies/{study}/instances",
            params={"limit": "1"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        found.raise_for_status()
        instance = found.json()[0]
        series, sop = instance["0020000E"]["Value"][0], instance["00080018"]["Value"][0]
        port = free_port()
        ungated = start_service(
            "imaging (ungated, bench only)",
            {**stack.imaging_env(), "IMAGEBRIDGE_IMAGING_PORT": str(port)},
            f"http://127.0.0.1:{port}",
            stack.data_dir / "ungated.log",
            command=[sys.executable, str(Path(__file__).resolve()), "--serve-ungated"],
        )
        ctx.track(ungated)
        try:
            path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1"
            yield GateUnderTest(stack, ungated, path, patient, issue)
        finally:
            ctx.release(ungated)


def _get(http: httpx.Client, url: str, token: str) -> Callable[[], httpx.Response]:
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    return lambda: http.get(url, headers=headers)


def _each_new(http: httpx.Client, url: str, tokens: Iterator[str]) -> Callable[[], httpx.Response]:
    """A request with the next token each time (nothing cached for it yet)."""
    return lambda: _get(http, url, next(tokens))()


def _added_latency(gate: GateUnderTest, count: int, repeats: int) -> list[Result]:
    """p50/p95 of the gated route minus the ungated one, warm and cold, in alternation (A B A B …)."""
    (warm,) = gate.tokens(1)
    method = (
        "gated imaging process minus a bench-only build of the same process whose gate admits at "
        "once and audits nothing; same data, same client, alternated; "
        f"{count} sequential requests per side per repeat, 1 worker, SQLite"
    )
    results = []
    with httpx.Client(timeout=30) as http:
        ungated = _get(http, gate.url(False), warm)
        sides: dict[str, Callable[[], Callable[[], httpx.Response]]] = {
            "warm": lambda: _get(http, gate.url(True), warm),
            "cold": lambda: _each_new(http, gate.url(True), iter(gate.tokens(count))),
        }
        for cache, gated in sides.items():
            runs: dict[str, list[list[float]]] = {"gated": [], "ungated": []}
            alternate(
                _recorded(runs["gated"], gated, count),
                _recorded(runs["ungated"], lambda: ungated, count),
                repeats,
                WARMUP,
            )
            pairs = list(zip(runs["gated"][WARMUP:], runs["ungated"][WARMUP:], strict=True))
            extra = {
                "gated_p50_ms": [percentile(a, 50) for a, _ in pairs],
                "ungated_p50_ms": [percentile(b, 50) for _, b in pairs],
            }
            for q in (50, 95):
                results.append(
                    Result(
                        f"Gate added latency of /frames/1, {cache} introspection cache",
                        f"added p{q}",
                        "ms",
                        "lower",
                        ours=Samples.of([percentile(a, q) - percentile(b, q) for a, b in pairs]),
                        target=(
                            Target(6, "added p50 <= 0.5 ms with a warm cache", "absolute", 0.5)
                            if (cache, q) == ("warm", 50)
                            else None
                        ),
                        note=method
                        if cache == "warm"
                        else f"a new token per request: one introspection each; {method}",
                        extra=extra,
                    )
                )
    return results


def _recorded(
    into: list[list[float]], make: Callable[[], Callable[[], httpx.Response]], count: int
) -> Measure:
    """A Measure of the p50 of ``count`` sequential requests, keeping every latency in ``into``."""

    def measure() -> float:
        into.append(latencies(make(), count))
        return percentile(into[-1], 50)

    return measure


def _rates(gate: GateUnderTest, count: int, repeats: int) -> Result:
    (token,) = gate.tokens(1)
    headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
    notes: list[str] = []
    bad: list[str] = []

    def rate(url: str, pid: int, label: str) -> Measure:
        async def send(http: httpx.AsyncClient, _: int) -> httpx.Response:
            return await http.get(url, headers=headers)

        def measure() -> float:
            load = throughput(send, count, CONNECTIONS, pid)
            if set(load.statuses) != {200}:
                bad.append(f"{label}: statuses {dict(load.statuses)}")
            notes.append(f"{label}: {load.describe()}")
            return load.rate

        return measure

    ours, peer = alternate(
        rate(gate.url(True), gate.pid, "with gate"),
        rate(gate.url(False), gate.ungated.process.pid, "without"),
        repeats,
        WARMUP,
    )
    scenario = "Gate /frames/1 requests/s, through the gate vs without"
    if bad:
        return failed(scenario, "throughput", "req/s", "higher", "; ".join(bad))
    return Result(
        scenario,
        "throughput",
        "req/s",
        "higher",
        ours=ours,
        peer=peer,
        peer_name="same imaging process without the gate (bench-only build)",
        note=f"warm cache, {CONNECTIONS} connections, 1 worker, SQLite; {'; '.join(notes[-2:])}",
        extra={"load": notes},
    )


def measure(ctx: BenchContext) -> list[Result]:
    """Every gate scenario ``ctx`` wants; one that cannot run is reported as failed, never dropped."""
    count, burst = (100, 300) if ctx.quick else (300, 1000)
    scenarios: list[tuple[str, Callable[[GateUnderTest], list[Result]]]] = [
        ("Gate added latency of /frames/1", lambda gate: _added_latency(gate, count, ctx.repeats)),
        ("Gate /frames/1 requests/s", lambda gate: [_rates(gate, burst, ctx.repeats)]),
    ]
    wanted = [(name, scenario) for name, scenario in scenarios if ctx.wants(name)]
    if not wanted:
        return []
    results: list[Result] = []
    try:
        with gate_under_test(ctx) as gate:
            for name, scenario in wanted:
                try:
                    results.extend(scenario(gate))
                except (httpx.HTTPError, RuntimeError) as exc:
                    results.append(failed(name, "-", "-", "lower", f"{type(exc).__name__}: {exc}"))
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        results.append(failed("Gate (all scenarios)", "-", "-", "lower", f"the stack did not start: {exc}"))
    return results


class _AdmitEverything:
    """Stands in for the gate in the bench-only ungated process: every request admitted at once."""

    def __init__(self, access: Any) -> None:
        self.access = access

    async def admit(self, request: Any, operation: str = "read") -> Any:
        return self.access

    async def may_see_study(self, access: Any, study_uid: str) -> bool:
        return True


class _AuditNothing:
    def __init__(self) -> None:
        self.written = asyncio.Event()  # the audit publisher waits on it; nothing is ever written

    async def record(
        self, request: Any, access: Any, response: Any, detail: str | None = None, **_: Any
    ) -> Any:
        return response

    async def start(self) -> None:
        """No journal to replay (the real log commits what ended processes journaled)."""

    async def aclose(self) -> None:
        """Nothing to commit (the real log commits its journal on shutdown)."""


def serve_ungated() -> None:
    """Serve the imaging application from ``IMAGEBRIDGE_IMAGING_*`` with its gate and audit
    replaced by pass-throughs. For this benchmark's comparison only; never a way to run imaging."""
    from imagebridge.common import settings as settings_mod
    from imagebridge.common.server import serve
    from imagebridge.common.settings import ImagingSettings
    from imagebridge.imaging.app import create_app
    from imagebridge.imaging.gate.gate import Access
    from imagebridge.imaging.gate.token_info import TokenInfo

    settings = settings_mod.load(ImagingSettings, "imaging")
    app = create_app(settings)
    access = Access(
        "-", TokenInfo(active=True, client_id="bench", exp=time.time() + 86400), frozenset({"system"})
    )
    app.state.ctx.gate = cast(Any, _AdmitEverything(access))
    app.state.ctx.audit = cast(Any, _AuditNothing())
    serve(app, settings.host, settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-ungated"]:
        serve_ungated()
    else:
        run(measure, __doc__.split("\n\n")[0])
