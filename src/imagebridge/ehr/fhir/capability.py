"""The CapabilityStatement at ``[base]/metadata`` (FHIR R4 §3.1.0.12 "capabilities").

It tells the truth about what this server does, and carries the SMART ``oauth-uris``
extension on ``rest.security`` for clients that predate ``.well-known/smart-configuration``
(SMART App Launch 2.2 §"Conformance", e.g. Python's fhirclient).
"""

from __future__ import annotations

from typing import Any

from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.search_params import PARAMS, params_for

_BULK = "http://hl7.org/fhir/uv/bulkdata"
_BULK_BY_TYPE = {"Patient": "patient-export", "Group": "group-export"}
_SEARCH_TYPES = {"token": "token", "reference": "reference", "date": "date", "string": "string"}


def _bulk_operation(name: str) -> dict[str, str]:
    """Bulk Data STU2 kick-off operations (spec.md §5 "Must implement (Bulk)")."""
    return {"name": "export", "definition": f"{_BULK}/OperationDefinition/{name}"}


def capability_statement(ctx: EhrContext) -> dict[str, Any]:
    origin = ctx.settings.origin
    resources = []
    for resource_type in sorted(PARAMS):
        audit = resource_type == "AuditEvent"  # never changed through the API (security.md AU-05)
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [
                {"code": code}
                for code in ("read", "search-type", "create", "update")
                if not (audit and code == "update")
            ],
            "conditionalCreate": True,
            "conditionalUpdate": not audit,
            "updateCreate": not audit,
            "conditionalDelete": "not-supported",
            "searchParam": [
                {"name": p.name, "type": _SEARCH_TYPES[p.kind]} for p in params_for(resource_type).values()
            ]
            + [{"name": "_lastUpdated", "type": "date"}],
        }
        if resource_type == "ImagingStudy":
            entry["searchInclude"] = ["ImagingStudy:endpoint"]
        if resource_type in _BULK_BY_TYPE:
            entry["operation"] = [_bulk_operation(_BULK_BY_TYPE[resource_type])]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-28",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "instantiates": [f"{_BULK}/CapabilityStatement/bulk-data"],
        "format": ["application/fhir+json"],
        "software": {"name": "imagebridge EHR"},
        "implementation": {"description": "imagebridge EHR", "url": ctx.settings.fhir_base},
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "authorize", "valueUri": f"{origin}/auth/authorize"},
                                {"url": "token", "valueUri": f"{origin}/auth/token"},
                                {"url": "introspect", "valueUri": f"{origin}/auth/introspect"},
                                {"url": "revoke", "valueUri": f"{origin}/auth/revoke"},
                                {"url": "register", "valueUri": f"{origin}/auth/register"},
                            ],
                        }
                    ],
                },
                "resource": resources,
                # POST [base] takes batch Bundles only: a transaction is refused (ehr/fhir/batch.py)
                "interaction": [{"code": "batch"}],
                "operation": [_bulk_operation("export")],
            }
        ],
    }
