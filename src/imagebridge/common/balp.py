"""The parts of an IHE Basic Audit Log Patterns (BALP) AuditEvent both services write alike.

The EHR records its own accesses and authorization events (``ehr/audit.py``); the imaging
system publishes its DICOMweb audit trail to the EHR (``imaging/gate/audit_publish.py``). Both
name the requesting application by its client id and the presented token by its id only (BALP
"OAUTHaccessTokenUse", opaque-token pattern: never the token), and both describe the patient,
the objects touched and the query as ``entity`` elements (FHIR R4 AuditEvent.entity; DICOM
PS3.15 A.5 codes).
"""

from __future__ import annotations

from typing import Any, Final

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
CLIENT_ID: Final = "urn:imagebridge:client-id"
GRANT_URN: Final = "urn:imagebridge:token-id:"
_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"

#: (entity type, object role) pairs: code and display of each (audit-entity-type, object-role).
PATIENT: Final = (("1", "Person"), ("1", "Patient"))
RESOURCE: Final = (("2", "System Object"), ("4", "Domain Resource"))
QUERY: Final = (("2", "System Object"), ("24", "Query"))
SECURITY_RESOURCE: Final = (("2", "System Object"), ("13", "Security Resource"))


def agents(
    client_id: str | None, token_id: str | None, user: str | None, address: str | None = None
) -> list[dict[str, Any]]:
    """AuditEvent.agent: the application (with the token's id and network address) and the user."""
    found: list[dict[str, Any]] = []
    policy = [f"{GRANT_URN}{token_id}"] if token_id else None
    if client_id:
        app: dict[str, Any] = {
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"identifier": {"system": CLIENT_ID, "value": client_id}},
            "requestor": True,
        }
        if policy:
            app["policy"] = policy
        if address:
            app["network"] = {"address": address, "type": "2"}
        found.append(app)
    elif policy:
        found.append({"who": {"display": "unidentified bearer"}, "policy": policy, "requestor": True})
    if user:
        who = {"reference": user} if "/" in user else {"display": user}
        found.append({"who": who, "requestor": True})
    return found or [{"who": {"display": "anonymous"}, "requestor": True}]


def entity(what: dict[str, Any] | None, kind: tuple[tuple[str, str], tuple[str, str]]) -> dict[str, Any]:
    """One AuditEvent.entity of the given (type, role) pair, e.g. :data:`PATIENT`."""
    (type_code, type_name), (role_code, role_name) = kind
    found: dict[str, Any] = {
        "type": {"system": _ENTITY_TYPE, "code": type_code, "display": type_name},
        "role": {"system": _ROLE, "code": role_code, "display": role_name},
    }
    if what:
        found["what"] = what
    return found


def source(display: str, observer: str) -> dict[str, Any]:
    """AuditEvent.source: this service, an application server (security-source-type 4)."""
    return {
        "observer": {"display": display, "identifier": {"value": observer}},
        "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}],
    }
