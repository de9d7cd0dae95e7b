"""Which attributes belong to the study and series levels (PS3.18 §10.6.3.3; PS3.4 C.6.1.1).

QIDO-RS returns study- and series-level attributes from these precomputed DICOM JSON
documents, so a search never opens an instance file.
"""

from __future__ import annotations

from typing import Any, Literal

from pydicom.datadict import tag_for_keyword
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


_KEYS = {
    level: tuple((keyword, f"{tag_for_keyword(keyword):08X}") for keyword in keywords)
    for level, keywords in (("study", STUDY_KEYWORDS), ("series", SERIES_KEYWORDS))
}


def level_json(instance: dict[str, Any], ds: Dataset, level: Literal["study", "series"]) -> bytes:
    """The DICOM JSON of the attributes at ``level`` of an instance, taken from its DICOM JSON
    ``instance`` (made from ``ds``). Every binary value is inline here (QIDO-RS answers have no
    bulk data to fetch): an attribute holding a ``BulkDataURI`` there is converted again from
    ``ds``."""
    result: dict[str, Any] = {}
    for keyword, key in _KEYS[level]:
        attribute = instance.get(key)
        if attribute is None:
            continue
        if _refers_to_bulk_data(attribute):
            single = Dataset()
            single[keyword] = ds[keyword]
            attribute = dicom_json.dataset_to_json(single, bulkdata_uri=None)[key]
        result[key] = attribute
    return dicom_json.json_bytes(dict(sorted(result.items())))


def _refers_to_bulk_data(attribute: dict[str, Any]) -> bool:
    if "BulkDataURI" in attribute:
        return True
    if attribute.get("vr") != "SQ":
        return False
    items = attribute.get("Value", [])
    return any(_refers_to_bulk_data(member) for item in items for member in item.values())
