"""Fetch a patient's studies the way any SMART backend app would, with one token.

    .venv/bin/python examples/fetch_study.py var/demo/demo.json [--patient alice] [--out var/fetched]

1. Authenticate at the EHR with client_credentials + private_key_jwt (SMART Backend Services).
2. Search ImagingStudy?patient=…&_include=ImagingStudy:endpoint at the EHR's FHIR API.
3. Follow each study's Endpoint.address + /studies/{uid} to the imaging system (WADO-RS),
   presenting the same token; write every instance to disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from imagebridge.apps.smart_client import BackendClient, backend_token, fetch_study, study_uid, write_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path, help="the demo.json written by `imagebridge demo`")
    parser.add_argument("--client", default="quality-review")
    parser.add_argument("--patient", default="alice")
    parser.add_argument("--out", type=Path, default=Path("var/fetched"))
    args = parser.parse_args()
    demo = json.loads(args.manifest.read_text())
    fhir = demo["ehr"]["fhir_base"]
    entry = next(c for c in demo["clients"] if c["client_id"] == args.client)
    client = BackendClient(entry["client_id"], entry["private_jwk"])
    with httpx.Client(timeout=120) as http:
        token = backend_token(fhir, client, "system/ImagingStudy.rs", http)["access_token"]
        response = http.get(
            f"{fhir}/ImagingStudy",
            params={"patient": args.patient, "_include": "ImagingStudy:endpoint"},
            headers={"Authorization": f"Bearer {token}"},
        )
        if response.status_code != 200:
            raise SystemExit(f"search refused: {response.status_code} {response.text}")
        bundle = response.json()
        studies = [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "ImagingStudy"]
        print(f"{len(studies)} studies of Patient/{args.patient} visible to {args.client}")
        for study in studies:
            uid = study_uid(study)
            paths = write_parts(fetch_study(study, bundle, token, http), args.out / uid)
            size = sum(p.stat().st_size for p in paths)
            print(f"  {study.get('description', uid)}: {len(paths)} instances, {size / 1e6:.1f} MB -> {args.out / uid}")


if __name__ == "__main__":
    main()
