"""Study- and series-level DICOM JSON taken from an instance's DICOM JSON (PS3.18 §10.6.3.3)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pytest
from pydicom.dataset import Dataset
from tests.imaging.archive.archive_stack import instance

from imagebridge.imaging.dicomweb import dicom_json
from imagebridge.imaging.dicomweb.levels import SERIES_KEYWORDS, STUDY_KEYWORDS, level_json


def _converted_alone(ds: Dataset, level: Literal["study", "series"]) -> dict[str, Any]:
    """What the level's attributes are, converted on their own with every binary value inline."""
    subset = Dataset()
    for keyword in STUDY_KEYWORDS if level == "study" else SERIES_KEYWORDS:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return dicom_json.dataset_to_json(subset, bulkdata_uri=None)


@pytest.mark.parametrize("level", ["study", "series"])
def test_levels_from_the_instance_json_equal_their_own_conversion(level: Literal["study", "series"]) -> None:
    ds = instance()
    ds.PatientName = "Müller^Jürgen"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = ""
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    request.add_new(0x00091010, "OB", bytes(4096))  # private, large: a BulkDataURI in the instance JSON
    ds.RequestAttributesSequence = [request]
    ds.SeriesNumber = 3
    instance_json = dicom_json.dataset_to_json(ds, bulkdata_uri=lambda path: f"bulk/{path}")

    made = orjson.loads(level_json(instance_json, ds, level))

    assert made == _converted_alone(ds, level)
    assert list(made) == sorted(made)
    if level == "series":
        assert "InlineBinary" in made["00400275"]["Value"][0]["00091010"]
