"""Which attributes belong to the study and series levels (PS3.18 §10.6.3.3; PS3.4 C.6.1.1).

QIDO-RS returns study- and series-level attributes from these precomputed DICOM JSON
documents, so a search never opens an instance file.
"""

from __future__ import annotations

from typing import Literal

from pydicom.dataset import Dataset

from imagebridge.imaging.dicomweb import dicom_json

#: Study-level attributes kept from the first instance of a study (Table 10.6.3-3 and the
#: Patient/Study modules of the Study Root information model).
STUDY_KEYWORDS = (
    "SpecificCharacterSet",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "TimezoneOffsetFromUTC",
    "StudyDescription",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyID",
)

#: Series-level attributes (Table 10.6.3-4, General Series module).
SERIES_KEYWORDS = (
    "SpecificCharacterSet",
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "BodyPartExamined",
    "Laterality",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)


def level_json(ds: Dataset, level: Literal["study", "series"]) -> bytes:
    """The DICOM JSON of ``ds``'s attributes at ``level``."""
    keywords = STUDY_KEYWORDS if level == "study" else SERIES_KEYWORDS
    subset = Dataset()
    for keyword in keywords:
        if keyword in ds:
            subset[keyword] = ds[keyword]
    return dicom_json.json_bytes(dicom_json.dataset_to_json(subset, bulkdata_uri=None))
