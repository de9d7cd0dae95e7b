"""QIDO-RS query parameters (PS3.18 §8.3.4, §10.6.1.2) and the attributes the index matches.

``{attributeID}={value}`` names an attribute by keyword (``PatientID``), by tag (``00100020``)
or, inside the Request Attributes Sequence, by a dotted path
(``RequestAttributesSequence.RequestedProcedureID``, ``00400275.00401001``). The query string is
percent-decoded exactly once (RFC 3986 §2.1; ``+`` is a space, as HTML forms and ``requests``
encode it): ``PatientName=Doe%5EJane%2A`` means ``Doe^Jane*``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

from pydicom.datadict import dictionary_keyword, tag_for_keyword
from sqlalchemy import ColumnElement, exists, select, true

from imagebridge.imaging.dicomweb.qido_match import (
    QueryError,
    fuzzy_person_name,
    is_universal,
    match,
    modality_list,
)
from imagebridge.imaging.tables import instances, series, series_requests, studies

Level = Literal["study", "series", "instance"]
LEVELS: tuple[Level, ...] = ("study", "series", "instance")

DEFAULT_LIMIT = 1000
"""Results per response when the request names no ``limit``."""
MAXIMUM_LIMIT = 10_000
"""Largest ``limit`` honored; a larger one is reduced (and the response says so in ``Warning``)."""

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_NON_NEGATIVE = re.compile(r"[0-9]{1,9}")
_SHOWN = 64


@dataclass(frozen=True)
class Key:
    """A matching key the index supports: its tag, VR, level and how to match it in SQL."""

    keyword: str
    tag: str
    vr: str
    level: Level
    column: Any = None  # the indexed column (None for the computed keys)
    fuzzy_column: Any = None  # the fold_person_name column of a PN key


def _key(keyword: str, vr: str, level: Level, column: Any = None, fuzzy_column: Any = None) -> Key:
    return Key(keyword, f"{tag_for_keyword(keyword):08X}", vr, level, column, fuzzy_column)


_REQUEST_ATTRIBUTES = "00400275"

#: PS3.18 Table 10.6.1-5 (required matching keys) plus the optional keys the index holds.
KEYS: tuple[Key, ...] = (
    _key("StudyDate", "DA", "study", studies.c.study_date),
    _key("StudyTime", "TM", "study", studies.c.study_time),
    _key("AccessionNumber", "SH", "study", studies.c.accession_number),
    _key("ModalitiesInStudy", "CS", "study"),
    _key(
        "ReferringPhysicianName",
        "PN",
        "study",
        studies.c.referring_physician_name,
        studies.c.referring_physician_name_fold,
    ),
    _key("PatientName", "PN", "study", studies.c.patient_name, studies.c.patient_name_fold),
    _key("PatientID", "LO", "study", studies.c.patient_id),
    _key("StudyInstanceUID", "UI", "study", studies.c.study_uid),
    _key("StudyID", "SH", "study", studies.c.study_id),
    _key("StudyDescription", "LO", "study", studies.c.study_description),
    _key("PatientBirthDate", "DA", "study", studies.c.patient_birth_date),
    _key("PatientSex", "CS", "study", studies.c.patient_sex),
    _key("Modality", "CS", "series", series.c.modality),
    _key("SeriesInstanceUID", "UI", "series", series.c.series_uid),
    _key("SeriesNumber", "IS", "series", series.c.series_number),
    _key("SeriesDescription", "LO", "series", series.c.series_description),
    _key("PerformedProcedureStepStartDate", "DA", "series", series.c.performed_start_date),
    _key("PerformedProcedureStepStartTime", "TM", "series", series.c.performed_start_time),
    Key(
        "RequestAttributesSequence.ScheduledProcedureStepID",
        f"{_REQUEST_ATTRIBUTES}.00400009",
        "SH",
        "series",
        series_requests.c.scheduled_procedure_step_id,
    ),
    Key(
        "RequestAttributesSequence.RequestedProcedureID",
        f"{_REQUEST_ATTRIBUTES}.00401001",
        "SH",
        "series",
        series_requests.c.requested_procedure_id,
    ),
    _key("SOPClassUID", "UI", "instance", instances.c.sop_class_uid),
    _key("SOPInstanceUID", "UI", "instance", instances.c.sop_uid),
    _key("InstanceNumber", "IS", "instance", instances.c.instance_number),
    _key("Rows", "US", "instance", instances.c.rows),
    _key("Columns", "US", "instance", instances.c.columns),
    _key("BitsAllocated", "US", "instance", instances.c.bits_allocated),
    _key("NumberOfFrames", "IS", "instance", instances.c.number_of_frames),
)
_BY_TAG = {k.tag: k for k in KEYS}
_CONTROL = {"includefield", "fuzzymatching", "limit", "offset"}


@dataclass(frozen=True)
class Filter:
    key: Key
    value: str


@dataclass
class Query:
    """A parsed QIDO-RS request for results at ``level``."""

    level: Level
    filters: list[Filter] = field(default_factory=list)
    include_all: bool = False
    include_tags: set[str] = field(default_factory=set)  # eight-hex tags named by includefield
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    limit_reduced: bool = False
    returned: dict[str, set[str]] = field(default_factory=dict)  # tags returned per level (memo)

    @property
    def matched_tags(self) -> set[str]:
        return {f.key.tag.split(".")[0] for f in self.filters}

    def conditions(self) -> list[ColumnElement[bool]]:
        """The SQL conditions of every filter (tables joined by the caller as the level needs)."""
        return [_condition(f, self.fuzzy) for f in self.filters]


def resolve(name: str) -> str:
    """An attribute keyword, tag or dotted path as eight-hex tags joined by ``.``; 400 if unknown."""
    parts = []
    for piece in name.split("."):
        if _TAG.fullmatch(piece):
            tag = piece.upper()
            if not _known_tag(int(tag, 16)):
                raise QueryError(f"unknown attribute {name[:_SHOWN]!r}: not in the DICOM data dictionary")
        else:
            number = tag_for_keyword(piece)
            if number is None:
                raise QueryError(
                    f"unknown attribute {name[:_SHOWN]!r}: not a DICOM keyword or an eight-digit hex tag"
                )
            tag = f"{number:08X}"
        parts.append(tag)
    return ".".join(parts)


def _known_tag(tag: int) -> bool:
    if (tag >> 16) % 2:
        return True  # private attributes are not in the dictionary
    try:
        return bool(dictionary_keyword(tag))
    except KeyError:
        return False


def parse(raw_query: str, level: Level, *, allowed_levels: Sequence[Level]) -> Query:
    """Parse a QIDO-RS query string for results at ``level``; matching keys of ``allowed_levels``.

    Raises :class:`QueryError` (400) for unknown attributes, keys this resource cannot match,
    repeated keys, and malformed ``limit``, ``offset`` or ``fuzzymatching`` values.
    """
    query = Query(level)
    seen: set[str] = set()
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        lowered = name.lower()
        if lowered in _CONTROL:
            _control(query, lowered, value)
            continue
        tag = resolve(name)
        key = _BY_TAG.get(tag)
        if key is None:
            raise QueryError(
                f"{name[:_SHOWN]!r} is not a matching key of this server; see docs/dicomweb-conformance.md"
            )
        if key.level not in allowed_levels:
            raise QueryError(f"{key.keyword} is a {key.level}-level attribute; it cannot be matched here")
        if tag in seen:
            raise QueryError(f"{key.keyword} is given more than once")
        seen.add(tag)
        query.filters.append(Filter(key, value))
    return query


def _control(query: Query, name: str, value: str) -> None:
    if name == "includefield":
        for item in (v.strip() for v in value.split(",")):
            if item.lower() == "all":
                query.include_all = True
            elif item:
                query.include_tags.add(resolve(item).split(".")[0])
    elif name == "fuzzymatching":
        if value.lower() not in ("true", "false"):
            raise QueryError("fuzzymatching must be true or false")
        query.fuzzy = value.lower() == "true"
    else:
        if not _NON_NEGATIVE.fullmatch(value):
            raise QueryError(f"{name} must be a non-negative integer")
        number = int(value)
        if name == "offset":
            query.offset = number
        elif number == 0:
            raise QueryError("limit must be at least 1")
        elif number > MAXIMUM_LIMIT:
            query.limit, query.limit_reduced = MAXIMUM_LIMIT, True
        else:
            query.limit = number


def _condition(f: Filter, fuzzy: bool) -> ColumnElement[bool]:
    key, value = f.key, f.value
    if is_universal(value):
        return true()
    if key.keyword == "ModalitiesInStudy":
        wanted = modality_list(value)
        if any("*" in m or "?" in m for m in wanted):
            raise QueryError("ModalitiesInStudy: list the modalities (CT,MR); wild cards are not supported")
        return exists(
            select(series.c.series_uid).where(
                series.c.study_uid == studies.c.study_uid, series.c.modality.in_(wanted)
            )
        )
    if key.column is not None and key.column.table is series_requests:
        return exists(
            select(series_requests.c.series_uid).where(
                series_requests.c.series_uid == series.c.series_uid,
                match(key.column, key.vr, value, key.keyword),
            )
        )
    if key.vr == "PN" and fuzzy and value:
        return fuzzy_person_name(key.fuzzy_column, value)
    return match(key.column, key.vr, value, key.keyword)
