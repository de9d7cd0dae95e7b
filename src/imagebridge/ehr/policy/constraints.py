"""Query-narrowed SMART v2 scopes (SMART App Launch 2.2 "Finer-grained resource constraints").

``patient/ImagingStudy.rs?modality=http://dicom.nema.org/resources/ontology/DCM|CT`` grants only
the studies the query would find. The constraint is parsed with the FHIR search grammar, so it
means exactly what the same search means: in SQL (:func:`sql`) for searches and in memory
(:func:`matches`) for single resources; both read the same index extraction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, true
from sqlalchemy.sql.elements import ColumnElement

from imagebridge.common.smart_scopes import Scope
from imagebridge.ehr.fhir.dates import date_range
from imagebridge.ehr.fhir.outcome import FhirError
from imagebridge.ehr.fhir.search import parse_search
from imagebridge.ehr.fhir.search_params import params_for
from imagebridge.ehr.fhir.store import Criterion, DateCriterion, TokenCriterion, clause


class UnusableConstraint(ValueError):
    """A scope's query is not a search this server understands: the scope grants nothing."""


def criteria(scope: Scope, resource_type: str) -> list[Criterion]:
    """The scope's constraints as search criteria on ``resource_type``."""
    if not scope.constraints:
        return []
    try:
        parsed = parse_search(resource_type, scope.constraints, strict=True)
    except FhirError as exc:
        raise UnusableConstraint(exc.diagnostics) from exc
    if parsed.includes or parsed.query.sort:
        raise UnusableConstraint("a scope constraint may only filter")
    return parsed.query.criteria


def sql(found: list[Criterion], resource_type: str) -> ColumnElement[bool]:
    return and_(true(), *(clause(c, resource_type) for c in found))


def matches(resource: dict[str, Any], found: list[Criterion]) -> bool:
    """True if ``resource`` satisfies every criterion (the in-memory twin of :func:`sql`)."""
    return all(_matches_one(resource, c) for c in found)


def _matches_one(resource: dict[str, Any], criterion: Criterion) -> bool:
    param = params_for(str(resource.get("resourceType")))
    if isinstance(criterion, TokenCriterion):
        values = list(param[criterion.param].extract(resource)) if criterion.param in param else []
        return any(
            code == v_code and (system is None or system == v_system)
            for system, code in criterion.alternatives
            for v_system, v_code in values
        )
    return _date_matches(resource, criterion, param)


def _date_matches(resource: dict[str, Any], criterion: DateCriterion, param: dict[str, Any]) -> bool:
    if criterion.param == "_lastUpdated":
        stamp = (resource.get("meta") or {}).get("lastUpdated")
        ranges = [date_range(stamp)] if isinstance(stamp, str) else []
    else:
        ranges = list(param[criterion.param].extract(resource)) if criterion.param in param else []
    lo, hi = date_range(criterion.value)
    tests: dict[str, Callable[[str, str], bool]] = {
        "eq": lambda low, high: low >= lo and high <= hi,
        "ne": lambda low, high: low < lo or high > hi,
        "gt": lambda low, high: high > hi,
        "lt": lambda low, high: low < lo,
        "ge": lambda low, high: high >= lo,
        "le": lambda low, high: low <= hi,
        "sa": lambda low, high: low > hi,
        "eb": lambda low, high: high < lo,
        "ap": lambda low, high: low <= hi and high >= lo,
    }
    test = tests[criterion.prefix]
    return any(test(low, high) for low, high in ranges)
