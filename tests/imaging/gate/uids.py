"""The UIDs of the demo studies in the gate stack (deterministic: synthetic.generate_study)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import httpx
from tests.gate_stack import GATE_SCALE, READ_ACCEPT, GateStack

from imagebridge.apps import demo_data
from imagebridge.apps.synthetic import generate_study


@dataclass(frozen=True)
class InstanceUids:
    study: str
    series: str
    instance: str
    patient_id: str


@cache
def first_instance(accession: str) -> InstanceUids:
    spec = next(s for s, _ in demo_data.studies(GATE_SCALE) if s.accession_number == accession)
    ds = next(iter(generate_study(spec)))
    return InstanceUids(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.PatientID)
    )


def get_instance(stack: GateStack, token: str, accession: str = "ACC-1002") -> httpx.Response:
    """WADO-RS of the first instance of a demo study (Alice's ACC-1002 by default) with ``token``."""
    uids = first_instance(accession)
    with httpx.Client(timeout=60) as http:
        return http.get(
            f"{stack.dicomweb_base}/studies/{uids.study}/series/{uids.series}/instances/{uids.instance}",
            headers={"Authorization": f"Bearer {token}", "Accept": READ_ACCEPT},
        )
