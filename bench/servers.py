"""The servers the imaging scenarios compare, as the client sees them (issue 7 "What to build" 1).

* imagebridge: ``imagebridge ehr serve`` + ``imaging serve`` as real processes (``LocalStack``),
  seeded with the benchmark's patients (MRN = DICOM PatientID), a modality client that stores by
  STOW-RS, a reader pre-authorized for a Group of every patient (QIDO at 10,000 studies), and a
  patient-context token whose grant covers the CT studies (WADO-RS through the gate);
* Orthanc from Debian, direct: no authentication, no HTTP trace, storage compression off, its
  DICOMweb plugin with its defaults (``StudiesMetadata``/``SeriesMetadata`` ``Full``), and Orthanc's
  own default of 50 HTTP threads (tests/orthanc.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bench.client import concurrently
from bench.context import BenchContext, tree_rss
from bench.data import DataSet, Instance, variant
from tests.orthanc import orthanc

from imagebridge.apps.seed import _multipart
from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.apps.stack import LocalStack
from imagebridge.apps.synthetic import PatientSpec
from imagebridge.common import jose
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.smart.grants import Grant, GrantStore

MRN_SYSTEM = "urn:imagebridge:mrn"
STOW_BOUNDARY = "bench-stow-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={STOW_BOUNDARY}'
#: Instances and bytes per STOW-RS request (at most), the same for both servers.
STOW_BATCH = 100
STOW_BYTES = 64 * 1024 * 1024
#: Orthanc's own default ``HttpThreadsCount``.
ORTHANC_THREADS = 50
PATIENT_SCOPE = "launch/patient patient/ImagingStudy.rs"
READER_SCOPE = "system/ImagingStudy.rs"
WRITE_SCOPE = "system/ImagingStudy.c"
#: Seconds a backend token is reused before ``Ours.fresh`` renews it (the EHR issues 300 s ones).
TOKEN_REUSE = 180


@dataclass
class Side:
    """One DICOMweb server under test: where it is, how to authorize, which processes to watch."""

    name: str
    base: str
    pid: int
    #: Authorization for reads of the CT studies (a patient-context token), for QIDO and for writes.
    read: dict[str, str] = field(default_factory=dict)
    search: dict[str, str] = field(default_factory=dict)
    write: dict[str, str] = field(default_factory=dict)

    def rss(self) -> int:
        """Resident bytes of the server: its process and every child (``--workers``)."""
        return tree_rss(self.pid)


@dataclass
class Ours:
    side: Side
    stack: LocalStack
    reader: BackendClient
    modality: BackendClient
    issued: float = 0.0

    def fresh(self) -> None:
        """New backend tokens for ``search`` and ``write`` when the current ones are older than
        ``TOKEN_REUSE`` seconds: the EHR caps Backend Services tokens at 300 s (SMART), so a long
        run renews them between scenarios (a new token starts with a cold gate cache: every
        scenario warms up first)."""
        if time.monotonic() - self.issued < TOKEN_REUSE:
            return
        fhir = self.stack.ehr_settings.fhir_base
        with httpx.Client(timeout=60) as http:
            search = backend_token(fhir, self.reader, READER_SCOPE, http)["access_token"]
            write = backend_token(fhir, self.modality, WRITE_SCOPE, http)["access_token"]
        self.side.search = {"Authorization": f"Bearer {search}"}
        self.side.write = {"Authorization": f"Bearer {write}"}
        self.issued = time.monotonic()

    def published(self, **params: str) -> int:
        """How many ImagingStudy resources (matching ``params``) the EHR holds: the imaging system
        publishes each stored study there, and the gate's decisions depend on it."""
        with httpx.Client(timeout=60) as http:
            answer = http.get(
                f"{self.stack.ehr_settings.fhir_base}/ImagingStudy",
                params={"_count": "1", **params},
                headers=self.side.search,
            )
        answer.raise_for_status()
        return int(answer.json()["total"])

    def wait_published(self, count: int, timeout: float = 1800, **params: str) -> float:
        """Wait until the EHR has ``count`` studies (matching ``params``); returns the seconds waited."""
        start = time.monotonic()
        while True:
            self.fresh()
            found = self.published(**params)
            if found >= count:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"only {found} of {count} studies were published to the EHR")
            time.sleep(1.0)


def fhir_id(patient: PatientSpec) -> str:
    """A valid FHIR id for any DICOM PatientID."""
    return "p-" + hashlib.sha256(patient.patient_id.encode()).hexdigest()[:20]


async def _seed(stack: LocalStack, patients: Sequence[PatientSpec], keys: dict[str, Any]) -> str:
    """Patients, a Group of all of them, the clients; returns a patient token for the first patient."""
    admin = Admin(stack.ehr_settings)
    try:
        members = []
        for p in patients:
            family, _, given = p.name.partition("^")
            await admin.put_resource(
                {
                    "resourceType": "Patient",
                    "id": fhir_id(p),
                    "identifier": [{"system": MRN_SYSTEM, "value": p.patient_id}],
                    "name": [{"family": family, "given": [given]}],
                    "birthDate": f"{p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}",
                    "gender": {"M": "male", "F": "female"}.get(p.sex, "other"),
                }
            )
            members.append({"entity": {"reference": f"Patient/{fhir_id(p)}"}})
        await admin.put_resource(
            {"resourceType": "Group", "id": "bench-all", "type": "person", "actual": True, "member": members}
        )
        await admin.add_client(
            "bench-modality",
            "backend",
            scope=WRITE_SCOPE,
            jwks=jose.public_jwks(keys["bench-modality"]),
            imaging_source=True,  # a modality: stores for any PatientID (docs/policy.md)
        )
        await admin.add_client(
            "bench-reader",
            "backend",
            scope=READER_SCOPE,
            jwks=jose.public_jwks(keys["bench-reader"]),
            group="Group/bench-all",
        )
        await admin.add_client(
            "bench-app", "public", scope=PATIENT_SCOPE, redirect_uris=("http://127.0.0.1/callback",)
        )
        now = time.time()
        first = fhir_id(patients[0])
        return await GrantStore(admin.engine).issue(
            Grant(
                "bench-app", PATIENT_SCOPE, now + 24 * 3600, now, patient=first, fhir_user=f"Patient/{first}"
            )
        )
    finally:
        await admin.close()


@contextmanager
def imagebridge(
    ctx: BenchContext,
    name: str,
    patients: Sequence[PatientSpec],
    imaging_args: tuple[str, ...] = (),
    **settings: Any,
) -> Iterator[Ours]:
    """A seeded imagebridge (EHR + imaging system) until the block ends; ``patients[0]`` owns the
    CT studies and is the patient of the ``read`` token."""
    with ctx.local_stack(name, imaging_args, **settings) as stack:
        keys = {c: jose.generate_private_jwk("ES384") for c in ("bench-modality", "bench-reader")}
        patient_token = asyncio.run(_seed(stack, patients, keys))
        assert stack.imaging is not None
        side = Side(
            "imagebridge",
            stack.imaging_settings.dicomweb_base,
            stack.imaging.process.pid,
            read={"Authorization": f"Bearer {patient_token}"},
        )
        reader = BackendClient("bench-reader", keys["bench-reader"])
        ours = Ours(side, stack, reader, BackendClient("bench-modality", keys["bench-modality"]))
        ours.fresh()
        yield ours


@contextmanager
def orthanc_direct(ctx: BenchContext) -> Iterator[Side]:
    """Orthanc without authentication, stopped by PID when the block ends."""
    with orthanc(ctx.scratch("orthanc"), auth=False, trace=False, threads=ORTHANC_THREADS) as server:
        yield Side("Orthanc", server.dicomweb_base, server.pid)


def sync_upstream(stack: LocalStack) -> None:
    """``imagebridge imaging sync --all``: publish every study of the upstream PACS to the EHR."""
    done = subprocess.run(
        [sys.executable, "-m", "imagebridge", "imaging", "sync", "--all"],
        env={**os.environ, **stack.imaging_env()},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"imaging sync failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")


def _batches(data: DataSet) -> Iterator[Sequence[Instance]]:
    """At most ``STOW_BATCH`` instances and about ``STOW_BYTES`` per request."""
    batch: list[Instance] = []
    size = 0
    for instance in data.instances:
        if batch and (len(batch) == STOW_BATCH or size + instance.size > STOW_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(instance)
        size += instance.size
    if batch:
        yield batch


def stow(http: httpx.Client, side: Side, data: DataSet, number: int = 0) -> tuple[int, float]:
    """Store ``data`` (as study variant ``number``) by STOW-RS, streaming each request's body from
    the files; returns (bytes of DICOM sent, seconds)."""
    sent = 0

    def parts(chunk: Sequence[Instance]) -> Iterator[bytes]:
        nonlocal sent
        for i in chunk:
            part = variant(i, (data.directory / i.path).read_bytes(), number)
            sent += len(part)
            yield part

    start = time.perf_counter()
    for chunk in _batches(data):
        answer = http.post(
            f"{side.base}/studies",
            content=_multipart(parts(chunk), STOW_BOUNDARY),
            headers={**side.write, "Content-Type": STOW_TYPE, "Accept": "application/dicom+json"},
        )
        if answer.status_code != 200:
            raise RuntimeError(f"STOW-RS to {side.name} answered {answer.status_code}: {answer.text[:300]}")
    return sent, time.perf_counter() - start


def stow_parallel(side: Side, data: DataSet, connections: int) -> float:
    """Store ``data`` over ``connections`` concurrent STOW-RS clients (each a share of the instances);
    returns the wall-clock seconds."""

    def client(share: DataSet) -> Callable[[], object]:
        def run() -> None:
            with httpx.Client(timeout=600) as http:
                stow(http, side, share)

        return run

    shares = [DataSet(data.name, data.directory, data.instances[n::connections]) for n in range(connections)]
    return concurrently([client(share) for share in shares])


def static_server(ctx: BenchContext, directory: Path, port: int) -> Any:
    """Python's own ``http.server`` on 127.0.0.1 serving ``directory`` (the machine's loopback limit)."""
    return ctx.popen(
        "http.server",
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(directory),
        ],
        ctx.work / "run" / "http-server.log",
    )
