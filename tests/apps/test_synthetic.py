"""The synthetic DICOM factory: valid per dciodvfy, deterministic, lazy, decodable."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from tests.services import require_executable

from imagebridge.apps import demo_data, synthetic
from imagebridge.apps.synthetic import (
    PatientSpec,
    StudySpec,
    dataset_bytes,
    generate_study,
    sample_files,
    study_uid_for,
    write_study,
)
from imagebridge.imaging.dicomweb.uids import is_valid_uid

PATIENT = PatientSpec("MRN-T1", "Test^Pat", "19800412", "F")


def _spec(modality: str, body_part: str = "CHEST", frames: int = 1, **kwargs: int) -> StudySpec:
    return StudySpec(
        PATIENT,
        modality,
        f"{modality} {body_part.lower()} test",
        body_part,
        "20240101",
        accession_number="ACC-T",
        series_count=kwargs.get("series_count", 2),
        instances_per_series=kwargs.get("instances_per_series", 2),
        rows=64,
        columns=48,
        frames=frames,
    )


SPECS = {
    "CT": _spec("CT"),
    "MR": _spec("MR", "HEAD"),
    "CR-chest": _spec("CR"),
    "CR-ankle": _spec("CR", "ANKLE"),
    "DX-chest": _spec("DX"),
    "DX-ankle": _spec("DX", "ANKLE"),
    "US": _spec("US", "PELVIS"),
    "US-cine": _spec("US", "PELVIS", frames=3),
}
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "US-cine": "1.2.840.10008.5.1.4.1.1.3.1",
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dciodvfy_finds_no_errors(name: str, tmp_path: Path) -> None:
    dciodvfy = require_executable("dciodvfy", "dicom3tools")
    for path in write_study(SPECS[name], tmp_path)[-1:]:  # the last: second series, second instance
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        output = result.stdout + result.stderr
        assert [line for line in output.splitlines() if line.startswith("Error")] == [], output


@pytest.mark.parametrize("name", sorted(SPECS))
def test_files_reread_with_the_right_sop_class_and_pixel_shape(name: str, tmp_path: Path) -> None:
    spec = SPECS[name]
    paths = write_study(spec, tmp_path)
    assert len(paths) == spec.series_count * spec.instances_per_series
    uids = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == SOP_CLASSES.get(name, SOP_CLASSES[spec.modality])
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.StudyInstanceUID == study_uid_for(spec)
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert uid.startswith("2.25.")
            assert is_valid_uid(uid)
        assert ds.PatientID == PATIENT.patient_id
        assert ds.BodyPartExamined == spec.body_part
        shape = (spec.frames, spec.rows, spec.columns) if spec.frames > 1 else (spec.rows, spec.columns)
        assert ds.pixel_array.shape == shape
        assert ds.pixel_array.std() > 0
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(paths)


def test_ct_pixels_are_hounsfield_units() -> None:
    ds = next(generate_study(SPECS["CT"]))
    hu = apply_modality_lut(ds.pixel_array, ds)
    assert hu[0, 0] == -1000  # air outside the body
    assert -150 < np.median(hu[hu > -1000]) < 100  # soft tissue and fat dominate the body
    assert hu.max() >= 600  # bone


@pytest.mark.parametrize("name", sorted(SPECS))
def test_same_spec_same_bytes(name: str) -> None:
    first = [dataset_bytes(ds) for ds in generate_study(SPECS[name])]
    second = [dataset_bytes(ds) for ds in generate_study(SPECS[name])]
    assert first == second
    assert first[0][128:132] == b"DICM"
    assert pydicom.dcmread(io.BytesIO(first[0])).StudyInstanceUID == study_uid_for(SPECS[name])


def test_seed_changes_uids_and_size_does_not_change_the_study_uid() -> None:
    spec = SPECS["CT"]
    assert study_uid_for(spec) != study_uid_for(StudySpec(**{**spec.__dict__, "seed": 1}))
    assert study_uid_for(spec) == study_uid_for(StudySpec(**{**spec.__dict__, "rows": 32}))


def test_demo_studies_never_share_uids() -> None:
    uids = [study_uid_for(spec) for spec, _ in demo_data.studies()]
    assert len(set(uids)) == len(uids)


def test_generation_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[int] = []
    instance = synthetic._instance

    def counting(spec: StudySpec, series: int, index: int) -> pydicom.Dataset:
        built.append(index)
        return instance(spec, series, index)

    monkeypatch.setattr(synthetic, "_instance", counting)
    study: Iterator[pydicom.Dataset] = generate_study(_spec("CT", instances_per_series=10_000))
    assert built == []
    next(study)
    next(study)
    assert built == [0, 1]


def test_yielded_datasets_do_not_share_state() -> None:
    study = generate_study(SPECS["MR"])
    first, second = next(study), next(study)
    first.PatientID = "CHANGED"
    first.SeriesDescription = "changed"
    assert second.PatientID == PATIENT.patient_id
    assert next(generate_study(SPECS["MR"])).SeriesDescription == "MR head test series 1"


def test_unknown_modality_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported modality"):
        next(generate_study(_spec("PT")))


def test_sample_files_cover_the_transfer_syntaxes_and_decode() -> None:
    samples = sample_files()
    syntaxes = {s.transfer_syntax_uid for s in samples}
    assert {
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
    } <= syntaxes
    for sample in samples:
        ds = pydicom.dcmread(sample.path)
        assert ds.file_meta.TransferSyntaxUID == sample.transfer_syntax_uid
        assert ds.pixel_array.size > 0, sample.name
