"""The synthetic DICOM factory: valid per dciodvfy, deterministic, lazy, decodable."""

from __future__ import annotations

import inspect
import io
import subprocess
from pathlib import Path

import pydicom
import pytest
from tests.services import require_executable

from imagebridge.apps import demo_data
from imagebridge.apps.synthetic import (
    StudySpec,
    dataset_bytes,
    generate_study,
    sample_files,
    study_uid_for,
    write_study,
)
from imagebridge.imaging.dicomweb.uids import is_valid_uid

SMALL = {
    m: StudySpec(
        demo_data.ALICE.spec,
        m,
        f"{m} test",
        "CHEST",
        "20240101",
        instances_per_series=2,
        rows=64,
        columns=64,
        frames=3 if m == "US" else 1,
        accession_number="ACC-T",
    )
    for m in ("CT", "MR", "CR", "DX", "US")
}


@pytest.mark.parametrize("modality", sorted(SMALL))
def test_dciodvfy_finds_no_errors(modality: str, tmp_path: Path) -> None:
    dciodvfy = require_executable("dciodvfy", "dicom3tools")
    path = write_study(SMALL[modality], tmp_path)[0]
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.parametrize("modality", sorted(SMALL))
def test_same_spec_same_bytes_and_valid_uids(modality: str) -> None:
    first = [dataset_bytes(ds) for ds in generate_study(SMALL[modality])]
    second = [dataset_bytes(ds) for ds in generate_study(SMALL[modality])]
    assert first == second
    ds = pydicom.dcmread(io.BytesIO(first[0]))
    assert ds.StudyInstanceUID == study_uid_for(SMALL[modality])
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert uid.startswith("2.25.")
        assert is_valid_uid(uid)


def test_generation_is_lazy() -> None:
    assert inspect.isgenerator(generate_study(SMALL["CT"]))


@pytest.mark.parametrize("modality", sorted(SMALL))
def test_pixels_decode_with_the_declared_shape(modality: str, tmp_path: Path) -> None:
    spec = SMALL[modality]
    ds = pydicom.dcmread(write_study(spec, tmp_path)[0])
    expected = (spec.frames, spec.rows, spec.columns) if spec.frames > 1 else (spec.rows, spec.columns)
    assert ds.pixel_array.shape == expected


def test_different_studies_never_share_uids() -> None:
    uids = [study_uid_for(spec) for spec, _ in demo_data.studies()]
    assert len(set(uids)) == len(uids)


def test_sample_files_cover_compressed_syntaxes_and_decode() -> None:
    samples = sample_files()
    syntaxes = {s.transfer_syntax_uid for s in samples}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"} <= syntaxes
    for sample in samples:
        assert pydicom.dcmread(sample.path).pixel_array.size > 0
