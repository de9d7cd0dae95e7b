"""EHR search and policy cost (issue 4 "Performance").

Seeds 10,000 ImagingStudy resources (100 patients x 100 studies, some labeled restricted) into a
fresh SQLite EHR, starts the EHR as a real process with one worker, and measures
``ImagingStudy?patient=…&_include=ImagingStudy:endpoint`` p50/p95 with a patient-context token,
plus the in-process cost of one policy decision per study.

    .venv/bin/python bench/ehr_search.py [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from imagebridge.apps.stack import free_port, settings_env, start_service
from imagebridge.common.settings import EhrSettings
from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.app import migrate
from imagebridge.ehr.policy.engine import PolicyEngine, Principal
from imagebridge.ehr.smart.grants import Grant, GrantStore

PATIENTS, PER_PATIENT = 100, 100
SCOPE = "patient/ImagingStudy.rs"
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


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


async def _seed(settings: EhrSettings) -> tuple[str, float]:
    admin = Admin(settings)
    try:
        await admin.add_client("bench-app", "public", scope=SCOPE)
        await admin.put_resource(
            {"resourceType": "Endpoint", "id": "wado", "status": "active", "address": "http://x"}
        )
        for p in range(PATIENTS):
            born = f"{date.today().year - (15 if p == 7 else 45)}-01-01"  # p7 is an adolescent
            await admin.put_resource({"resourceType": "Patient", "id": f"p{p}", "birthDate": born})
            for n in range(PER_PATIENT):
                await admin.put_resource(_study(p, n))
        await admin.put_resource(
            {
                "resourceType": "RelatedPerson",
                "id": "proxy",
                "active": True,
                "patient": {"reference": "Patient/p7"},
            }
        )
        now = time.time()
        token = await GrantStore(admin.engine).issue(
            Grant("bench-app", SCOPE, now + 3600, now, patient="p7", fhir_user="RelatedPerson/proxy")
        )
        principal = Principal("bench-app", parse_scopes(SCOPE), "p7", "RelatedPerson/proxy")
        view = await PolicyEngine(admin.store).view(principal)
        scopes = view.scopes_for("ImagingStudy", ("s",))
        studies = [_study(p, n) for p in range(PATIENTS) for n in range(PER_PATIENT)]
        start = time.perf_counter()
        for study in studies:
            view.decide(study, scopes)
        per_study = (time.perf_counter() - start) / len(studies)
        return token, per_study
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = EhrSettings(port=port, data_dir=Path(tmp))
        migrate(settings)
        token, per_study = asyncio.run(_seed(settings))
        env = settings_env("EHR", {"port": port, "data_dir": tmp, "log_level": "warning"})
        service = start_service("ehr", env, settings.origin, Path(tmp) / "ehr.log")
        try:
            url = f"{settings.fhir_base}/ImagingStudy"
            params = {"patient": "p7", "_include": "ImagingStudy:endpoint"}
            times = []
            with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                assert http.get(url, params=params).json()["total"] == PER_PATIENT - PER_PATIENT // 10
                for _ in range(args.requests):
                    start = time.perf_counter()
                    http.get(url, params=params).raise_for_status()
                    times.append((time.perf_counter() - start) * 1000)
        finally:
            service.stop()
    times.sort()
    print(f"studies in the EHR: {PATIENTS * PER_PATIENT}")
    print(
        f"ImagingStudy?patient&_include p50 {statistics.median(times):.1f} ms, "
        f"p95 {times[int(len(times) * 0.95) - 1]:.1f} ms ({args.requests} requests, 1 worker)"
    )
    print(f"policy decision per study: {per_study * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
