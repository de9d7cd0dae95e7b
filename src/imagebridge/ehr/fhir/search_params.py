"""Search parameters the EHR indexes, per resource type (FHIR R4 §3.1.1 "Search").

Each parameter extracts index values from a resource document: token and reference parameters
become ``(system, code)`` rows, date parameters become ``[low, high]`` instants.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from imagebridge.ehr.fhir.dates import date_range

Kind = Literal["token", "reference", "date", "string"]
Resource = dict[str, Any]


@dataclass(frozen=True)
class SearchParam:
    name: str
    kind: Kind
    extract: Callable[[Resource], Iterator[Any]]


def _identifiers(path: str) -> Callable[[Resource], Iterator[tuple[str, str]]]:
    def extract(resource: Resource) -> Iterator[tuple[str, str]]:
        for ident in _as_list(resource.get(path)):
            if isinstance(ident, dict) and ident.get("value"):
                yield str(ident.get("system", "")), str(ident["value"])

    return extract


def _references(*paths: str) -> Callable[[Resource], Iterator[tuple[str, str]]]:
    def extract(resource: Resource) -> Iterator[tuple[str, str]]:
        for path in paths:
            node: Any = resource
            for step in path.split("."):
                node = [item.get(step) for item in _as_list(node) if isinstance(item, dict)]
                node = [leaf for value in node for leaf in _as_list(value)]
            for ref in node:
                if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                    yield "", ref["reference"]

    return extract


def _codings(path: str) -> Callable[[Resource], Iterator[tuple[str, str]]]:
    def extract(resource: Resource) -> Iterator[tuple[str, str]]:
        for coding in _as_list(resource.get(path)):
            if isinstance(coding, dict) and coding.get("code"):
                yield str(coding.get("system", "")), str(coding["code"])

    return extract


def _dates(path: str) -> Callable[[Resource], Iterator[tuple[str, str]]]:
    def extract(resource: Resource) -> Iterator[tuple[str, str]]:
        value = resource.get(path)
        if isinstance(value, str):
            yield date_range(value)

    return extract


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _security(resource: Resource) -> Iterator[tuple[str, str]]:
    return _codings("security")(resource.get("meta", {}))


_COMMON = (SearchParam("_security", "token", _security),)


def _status(resource: Resource) -> Iterator[tuple[str, str]]:
    if isinstance(resource.get("status"), str):
        yield "", resource["status"]


def _entity_refs(keep: Callable[[str], bool]) -> Callable[[Resource], Iterator[tuple[str, str]]]:
    """AuditEvent ``entity.what`` references whose resource type ``keep`` accepts."""

    def extract(resource: Resource) -> Iterator[tuple[str, str]]:
        for _, ref in _references("entity.what")(resource):
            if keep(ref.partition("/")[0]):
                yield "", ref

    return extract


def _entity_identifiers(resource: Resource) -> Iterator[tuple[str, str]]:
    for entity in _as_list(resource.get("entity")):
        what = entity.get("what") if isinstance(entity, dict) else None
        if isinstance(what, dict):
            yield from _identifiers("identifier")(what)


def _entity_types(resource: Resource) -> Iterator[tuple[str, str]]:
    """The resource types an AuditEvent names (so a Consent withholding a type hides the event)."""
    for kind in sorted({ref.partition("/")[0] for _, ref in _references("entity.what")(resource)}):
        yield "", kind


_PATIENT_SUBJECT = SearchParam("patient", "reference", _references("subject"))
_IDENTIFIER = SearchParam("identifier", "token", _identifiers("identifier"))

PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (_IDENTIFIER, SearchParam("organization", "reference", _references("managingOrganization"))),
    "Practitioner": (_IDENTIFIER,),
    "PractitionerRole": (
        _IDENTIFIER,
        SearchParam("practitioner", "reference", _references("practitioner")),
        SearchParam("organization", "reference", _references("organization")),
    ),
    "Organization": (_IDENTIFIER,),
    "RelatedPerson": (_IDENTIFIER, SearchParam("patient", "reference", _references("patient"))),
    "Group": (_IDENTIFIER, SearchParam("member", "reference", _references("member.entity"))),
    "CareTeam": (
        _PATIENT_SUBJECT,
        SearchParam("participant", "reference", _references("participant.member")),
        SearchParam("status", "token", _status),
    ),
    "Consent": (
        SearchParam("patient", "reference", _references("patient")),
        SearchParam("status", "token", _status),
    ),
    "ImagingStudy": (
        _IDENTIFIER,
        _PATIENT_SUBJECT,
        SearchParam("endpoint", "reference", _references("endpoint")),
        SearchParam("modality", "token", _codings("modality")),
        SearchParam("started", "date", _dates("started")),
    ),
    "Endpoint": (_IDENTIFIER,),
    "DiagnosticReport": (
        _IDENTIFIER,
        _PATIENT_SUBJECT,
        SearchParam("imaging-study", "reference", _references("imagingStudy")),
        SearchParam("issued", "date", _dates("issued")),
    ),
    "AuditEvent": (
        SearchParam("patient", "reference", _entity_refs(lambda kind: kind == "Patient")),
        SearchParam("entity", "reference", _entity_refs(lambda kind: True)),
        SearchParam("entity-type", "token", _entity_types),
        # the reference parameter's :identifier modifier (FHIR R4 §3.1.1.4.9), e.g. a record id
        SearchParam("entity:identifier", "token", _entity_identifiers),
        SearchParam("agent", "reference", _references("agent.who")),
        SearchParam("date", "date", _dates("recorded")),
    ),
}


def params_for(resource_type: str) -> dict[str, SearchParam]:
    """The indexed search parameters of ``resource_type`` by name."""
    return {p.name: p for p in (*PARAMS.get(resource_type, ()), *_COMMON)}
