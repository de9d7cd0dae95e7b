"""EHR scenarios of the benchmark (issue 7 "EHR"; targets from issue 3 and issue 4 "Performance").

One EHR process with one worker, on SQLite, holding 10,000 ImagingStudy resources (100 patients x
100 studies, every tenth labeled restricted; 1,000 with ``--quick``). Measured:

* backend tokens/s: ``client_credentials`` with ``private_key_jwt`` assertions, RS384 and ES384
  separately, over several connections; the assertions (each with a fresh ``jti``) are signed
  before the clock starts, so the client's signing cost is not counted;
* introspections/s, authenticated as the imaging system (its own ``introspection``-scoped token),
  of a patient-context token whose imaging grant lists the patient's studies;
* ``ImagingStudy?patient=…&_include=ImagingStudy:endpoint`` p50/p95 (one connection, sequential);
* the in-process cost of one policy decision per study.

    .venv/bin/python bench/ehr_scenarios.py [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

if not __package__:  # run as a script: make ``bench.*`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.context import BenchContext
from bench.load import encode_post, latencies, percentile, raw_throughput
from bench.result import Result, Samples, Target, failed
from bench.standalone import run

from imagebridge.apps.stack import ServiceProcess, free_port, settings_env
from imagebridge.common import jose
from imagebridge.common.settings import EhrSettings
from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.app import migrate
from imagebridge.ehr.policy.engine import PolicyEngine, Principal
from imagebridge.ehr.smart.grants import Grant, GrantStore

PATIENT_SCOPE = "patient/ImagingStudy.rs"
BACKEND_SCOPE = "system/ImagingStudy.rs"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
#: Concurrent client connections for the throughput scenarios.
CONNECTIONS = 8
#: The patient searched and introspected: an adolescent whose proxy sees the unrestricted studies.
PATIENT = "p7"


@dataclass
class EhrUnderTest:
    """A seeded EHR process and the credentials the scenarios use."""

    settings: EhrSettings
    service: ServiceProcess
    studies: int
    per_patient: int
    keys: dict[str, dict[str, Any]]  # client id → private JWK
    patient_token: str
    decision_seconds: float  # in-process cost of one policy decision per study

    @property
    def pid(self) -> int:
        return self.service.process.pid


def _study(p: int, n: int) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"s{p}-{n}",
        "meta": {"security": [RESTRICTED] if n % 10 == 0 else []},
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{p * 1000 + n}"}],
        "subject": {"reference": f"Patient/p{p}"},
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
        "started": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T10:00:00Z",
        "endpoint": [{"reference": "Endpoint/wado"}],
    }


async def _seed(settings: EhrSettings, patients: int, per_patient: int) -> tuple[dict[str, Any], str, float]:
    keys = {
        "bench-rs384": jose.generate_private_jwk("RS384"),
        "bench-es384": jose.generate_private_jwk("ES384"),
        "imaging": jose.generate_private_jwk("ES384"),
    }
    admin = Admin(settings)
    try:
        await admin.add_client("bench-app", "public", scope=PATIENT_SCOPE)
        for client_id in ("bench-rs384", "bench-es384"):
            await admin.add_client(
                client_id, "backend", scope=BACKEND_SCOPE, jwks=jose.public_jwks(keys[client_id])
            )
        await admin.add_client(
            "imaging", "backend", scope="introspection", jwks=jose.public_jwks(keys["imaging"])
        )
        await admin.put_resource(
            {"resourceType": "Endpoint", "id": "wado", "status": "active", "address": "http://x"}
        )
        for p in range(patients):
            born = f"{date.today().year - (15 if f'p{p}' == PATIENT else 45)}-01-01"
            await admin.put_resource({"resourceType": "Patient", "id": f"p{p}", "birthDate": born})
            for n in range(per_patient):
                await admin.put_resource(_study(p, n))
        await admin.put_resource(
            {
                "resourceType": "RelatedPerson",
                "id": "proxy",
                "active": True,
                "patient": {"reference": f"Patient/{PATIENT}"},
            }
        )
        now = time.time()
        token = await GrantStore(admin.engine).issue(
            Grant(
                "bench-app",
                PATIENT_SCOPE,
                now + 24 * 3600,
                now,
                patient=PATIENT,
                fhir_user="RelatedPerson/proxy",
            )
        )
        principal = Principal("bench-app", parse_scopes(PATIENT_SCOPE), PATIENT, "RelatedPerson/proxy")
        view = await PolicyEngine(admin.store).view(principal)
        scopes = view.scopes_for("ImagingStudy", ("s",))
        studies = [_study(p, n) for p in range(patients) for n in range(per_patient)]
        start = time.perf_counter()
        for study in studies:
            view.decide(study, scopes)
        return keys, token, (time.perf_counter() - start) / len(studies)
    finally:
        await admin.close()


@contextmanager
def ehr_under_test(ctx: BenchContext) -> Iterator[EhrUnderTest]:
    """Seed a fresh EHR in ``ctx.scratch("ehr")`` and run it as a real process (one worker)."""
    patients, per_patient = (10, 100) if ctx.quick else (100, 100)
    data = ctx.scratch("ehr")
    port = free_port()
    settings = EhrSettings(port=port, data_dir=data)
    migrate(settings)
    keys, token, per_study = asyncio.run(_seed(settings, patients, per_patient))
    env = settings_env("EHR", {"port": port, "data_dir": data})
    with ctx.service("ehr", env, settings.origin, data / "ehr.log") as service:
        yield EhrUnderTest(settings, service, patients * per_patient, per_patient, keys, token, per_study)


def _token_requests(ehr: EhrUnderTest, client_id: str, count: int) -> list[bytes]:
    """Requests for backend tokens, their assertions signed now (fresh ``jti`` each)."""
    endpoint = f"{ehr.settings.origin}/auth/token"
    return [
        encode_post(
            endpoint,
            {
                "grant_type": "client_credentials",
                "scope": BACKEND_SCOPE,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": jose.client_assertion(client_id, endpoint, ehr.keys[client_id]),
            },
        )
        for _ in range(count)
    ]


def _imaging_token(ehr: EhrUnderTest) -> str:
    endpoint = f"{ehr.settings.origin}/auth/token"
    response = httpx.post(
        endpoint,
        data={
            "grant_type": "client_credentials",
            "scope": "introspection",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": jose.client_assertion("imaging", endpoint, ehr.keys["imaging"]),
        },
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def _rate_result(
    scenario: str,
    ehr: EhrUnderTest,
    make: Callable[[int], list[bytes]],
    count: int,
    repeats: int,
    target: Target,
) -> Result:
    """Requests/s over :data:`CONNECTIONS` connections, a warm-up burst then ``repeats`` timed ones
    (:func:`~bench.load.raw_throughput`: the client is not what limits the rate)."""
    origin = ehr.settings.origin
    raw_throughput(origin, make(count // 2), CONNECTIONS, ehr.pid)  # warm-up
    rates, notes = [], []
    for _ in range(repeats):
        load = raw_throughput(origin, make(count), CONNECTIONS, ehr.pid)
        if set(load.statuses) != {200}:
            return failed(scenario, "throughput", "req/s", "higher", f"statuses {dict(load.statuses)}")
        rates.append(load.rate)
        notes.append(load.describe())
    return Result(
        scenario,
        "throughput",
        "req/s",
        "higher",
        ours=Samples.of(rates),
        target=target,
        note=f"1 worker, SQLite, {CONNECTIONS} connections, {count - CONNECTIONS} timed requests per repeat "
        f"from a minimal HTTP/1.1 client; {notes[len(notes) // 2]}",
        extra={"load": notes},
    )


def _tokens(ehr: EhrUnderTest, alg: str, count: int, repeats: int) -> Result:
    client_id = f"bench-{alg.lower()}"
    result = _rate_result(
        f"EHR backend tokens/s ({alg} client assertions)",
        ehr,
        lambda n: _token_requests(ehr, client_id, n),
        count,
        repeats,
        Target(3, ">= 200 backend tokens/s per worker", "absolute", 200),
    )
    result.note += "; assertions pre-signed before timing (client signing excluded)"
    return result


def _introspections(ehr: EhrUnderTest, count: int, repeats: int) -> Result:
    endpoint = f"{ehr.settings.origin}/auth/introspect"
    headers = {"Authorization": f"Bearer {_imaging_token(ehr)}"}
    form = {"token": ehr.patient_token}
    request = encode_post(endpoint, form, headers)

    def make(count: int) -> list[bytes]:
        return [request] * count

    check = httpx.post(endpoint, data=form, headers=headers).json()
    result = _rate_result(
        "EHR introspections/s (as the imaging system)",
        ehr,
        make,
        count,
        repeats,
        Target(3, ">= 500 introspections/s per worker", "absolute", 500),
    )
    grant = check.get("urn:imagebridge:imaging-grant", {})
    result.note += (
        f"; a patient-context token whose imaging grant lists {len(grant.get('studies', []))} of "
        f"{ehr.per_patient} studies"
    )
    return result


def _search(ehr: EhrUnderTest, count: int, repeats: int) -> list[Result]:
    url = f"{ehr.settings.fhir_base}/ImagingStudy"
    params = {"patient": PATIENT, "_include": "ImagingStudy:endpoint"}
    scenario = f"EHR ImagingStudy?patient&_include at {ehr.studies:,} studies"
    with httpx.Client(headers={"Authorization": f"Bearer {ehr.patient_token}"}, timeout=30) as http:
        response = http.get(url, params=params)
        bundle = response.json()
        expected = ehr.per_patient - ehr.per_patient // 10
        if response.status_code != 200 or bundle.get("total") != expected:
            reason = f"expected total {expected}, got HTTP {response.status_code}: {response.text[:300]}"
            return [failed(scenario, "p50", "ms", "lower", reason)]
        latencies(lambda: http.get(url, params=params), count // 4)  # warm-up
        runs = [latencies(lambda: http.get(url, params=params), count) for _ in range(repeats)]
    note = (
        f"1 worker, SQLite, one connection, {count} sequential requests per repeat; "
        f"{len(bundle['entry'])} entries per page (default _count), total {expected}"
    )
    return [
        Result(
            scenario,
            "p50",
            "ms",
            "lower",
            ours=Samples.of([percentile(r, 50) for r in runs]),
            target=Target(4, "p50 <= 10 ms on one worker", "absolute", 10),
            note=note,
        ),
        Result(scenario, "p95", "ms", "lower", ours=Samples.of([percentile(r, 95) for r in runs]), note=note),
        Result(
            "EHR policy decision per study",
            "time",
            "µs",
            "lower",
            ours=Samples.of([ehr.decision_seconds * 1e6]),
            note=f"in process, PolicyView.decide over {ehr.studies:,} studies for a proxy's patient token",
        ),
    ]


def measure(ctx: BenchContext) -> list[Result]:
    """Every EHR scenario ``ctx`` wants; one that cannot run is reported as failed, never dropped."""
    tokens, introspections, searches = (150, 300, 100) if ctx.quick else (600, 1200, 300)
    scenarios: list[tuple[str, Callable[[EhrUnderTest], list[Result]]]] = [
        ("EHR backend tokens/s (RS384)", lambda ehr: [_tokens(ehr, "RS384", tokens, ctx.repeats)]),
        ("EHR backend tokens/s (ES384)", lambda ehr: [_tokens(ehr, "ES384", tokens, ctx.repeats)]),
        ("EHR introspections/s", lambda ehr: [_introspections(ehr, introspections, ctx.repeats)]),
        ("EHR ImagingStudy search", lambda ehr: _search(ehr, searches, ctx.repeats)),
    ]
    wanted = [(name, scenario) for name, scenario in scenarios if ctx.wants(name)]
    if not wanted:
        return []
    results: list[Result] = []
    try:
        with ehr_under_test(ctx) as ehr:
            for name, scenario in wanted:
                try:
                    results.extend(scenario(ehr))
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    results.append(failed(name, "-", "-", "higher", f"{type(exc).__name__}: {exc}"))
    except (RuntimeError, OSError) as exc:
        results.append(failed("EHR (all scenarios)", "-", "-", "higher", f"the EHR did not start: {exc}"))
    return results


if __name__ == "__main__":
    run(measure, __doc__.split("\n\n")[0])
