"""Security labels that hide studies (FHIR R4 §6.1.0 "Security Labels"; spec.md §4.4).

Confidentiality ``R`` (restricted) and ``V`` (very restricted) from HL7 v3 Confidentiality, and the
sensitivity codes ``PSY``, ``HIV``, ``SUD``, ``ETH``, ``SDV`` from HL7 v3 ActCode, found in
``meta.security``.
"""

from __future__ import annotations

from typing import Any, Final

Label = tuple[str, str]  # (system, code)

CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

#: Labels a clinician needs an explicit role to see.
RESTRICTED: Final[frozenset[Label]] = frozenset({(CONFIDENTIALITY, "R"), (CONFIDENTIALITY, "V")})
#: Labels that make a study sensitive (withheld from a proxy of an adolescent).
SENSITIVE: Final[frozenset[Label]] = RESTRICTED | frozenset(
    (ACT_CODE, code) for code in ("PSY", "HIV", "SUD", "ETH", "SDV")
)


def labels_of(resource: dict[str, Any]) -> frozenset[Label]:
    """The ``(system, code)`` pairs of a resource's ``meta.security``."""
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    return frozenset(
        (str(c.get("system", "")), str(c["code"]))
        for c in security or []
        if isinstance(c, dict) and c.get("code")
    )
