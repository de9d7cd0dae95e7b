"""Parsing FHIR search requests into store queries (FHIR R4 §3.1.1 "Search").

Supports token parameters (``[system]|[code]``, comma alternatives), reference parameters
(``patient=123``, ``patient=Patient/123``), date prefixes, ``_lastUpdated``, ``_count``,
``_sort`` on dates and ``_include``. Unknown parameters are an error under
``Prefer: handling=strict`` and ignored otherwise (FHIR R4 §3.1.1.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from imagebridge.ehr.fhir.dates import InvalidDate, date_range
from imagebridge.ehr.fhir.outcome import FhirError
from imagebridge.ehr.fhir.search_params import params_for
from imagebridge.ehr.fhir.store import Criterion, DateCriterion, DatePrefix, Query, TokenCriterion

MAX_COUNT = 1000
DEFAULT_COUNT = 50
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=\d)")
_RESULT_PARAMS = {"_count", "_sort", "_include", "_offset", "_format", "_summary", "_total"}


@dataclass
class SearchRequest:
    query: Query
    includes: list[str] = field(default_factory=list)
    patient: str | None = None  # the logical id named by a patient/subject parameter
    ignored: list[str] = field(default_factory=list)


def parse_search(resource_type: str, params: Iterable[tuple[str, str]], *, strict: bool) -> SearchRequest:
    """Turn query parameters into a :class:`SearchRequest` or raise a 400 :class:`FhirError`."""
    known = params_for(resource_type)
    criteria: list[Criterion] = []
    request = SearchRequest(Query(resource_type, criteria, count=DEFAULT_COUNT))
    for raw_name, value in params:
        name = "patient" if raw_name == "subject" and "patient" in known else raw_name
        if name == "_count":
            request.query.count = _int(name, value, 0, MAX_COUNT)
        elif name == "_offset":
            request.query.offset = _int(name, value, 0, 10**9)
        elif name == "_sort":
            request.query.sort = tuple(_sort(resource_type, key) for key in value.split(",") if key)
        elif name == "_include":
            request.includes.append(value)
        elif name in _RESULT_PARAMS:
            continue
        elif name == "_lastUpdated":
            criteria.append(_date(name, value))
        elif name in known:
            param = known[name]
            if param.kind == "date":
                criteria.append(_date(name, value))
            elif param.kind == "reference":
                refs = [_reference(name, v, raw_name) for v in value.split(",")]
                if name == "patient":
                    if len(refs) != 1:
                        raise FhirError(400, "invalid", "search by one patient at a time")
                    request.patient = refs[0].removeprefix("Patient/")
                criteria.append(TokenCriterion(name, tuple((None, r) for r in refs)))
            else:
                criteria.append(TokenCriterion(name, tuple(_token(v) for v in value.split(","))))
        elif strict:
            raise FhirError(
                400, "not-supported", f"unknown search parameter {raw_name!r} for {resource_type}"
            )
        else:
            request.ignored.append(raw_name)
    return request


def _int(name: str, value: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise FhirError(400, "invalid", f"{name} must be an integer between {low} and {high}")
    return int(value)


def _sort(resource_type: str, key: str) -> tuple[str, bool]:
    desc = key.startswith("-")
    name = key.lstrip("-")
    if name != "_lastUpdated" and params_for(resource_type).get(name, None) is None:
        raise FhirError(400, "not-supported", f"cannot sort by {name!r}")
    if name != "_lastUpdated" and params_for(resource_type)[name].kind != "date":
        raise FhirError(400, "not-supported", f"cannot sort by {name!r}")
    return name, desc


def _date(name: str, value: str) -> DateCriterion:
    match = _PREFIX.match(value)
    prefix: DatePrefix = match.group(1) if match else "eq"  # type: ignore[assignment]
    text = value[len(prefix) :] if match else value
    try:
        date_range(text)
    except InvalidDate as exc:
        raise FhirError(400, "invalid", f"{name}: {exc}") from exc
    return DateCriterion(name, prefix, text)


def _reference(name: str, value: str, raw_name: str) -> str:
    value = value.strip()
    if not value or len(value) > 200 or any(c in value for c in " \t\r\n"):
        raise FhirError(400, "invalid", f"{raw_name}: not a reference")
    if name == "patient" and "/" not in value:
        return f"Patient/{value}"
    return value


def _token(value: str) -> tuple[str | None, str]:
    if len(value) > 500:
        raise FhirError(400, "invalid", "token value too long")
    if "|" in value:
        system, _, code = value.partition("|")
        return system, code
    return None, value
