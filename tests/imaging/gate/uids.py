"""The UIDs of the demo studies in the gate stack (deterministic: synthetic.generate_study)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from tests.gate_stack import GATE_SCALE

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
