"""The one place that decides what an authorization may see (ARCHITECTURE.md "Policy").

Every path asks here: FHIR search and read, Bulk export, and what the imaging system is told
through introspection or through its FHIR queries made with the caller's own token.
Decisions carry a ``why`` for debug logs and audit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from imagebridge.common.smart_scopes import ScopeSet
from imagebridge.ehr.fhir.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """The authorization behind a request: the client, its granted scopes and its context."""

    client_id: str
    scopes: ScopeSet
    patient: str | None = None  # patient context (logical id)
    fhir_user: str | None = None  # Patient/…, RelatedPerson/…, Practitioner/…
    group_ref: str | None = None  # the Group a backend client was pre-authorized for

    @property
    def levels(self) -> frozenset[str]:
        return frozenset(s.level for s in self.scopes.resource_scopes)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str


class PolicyEngine:
    """Decide, per resource, whether a principal may see it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def reachable_patients(self, principal: Principal) -> frozenset[str] | None:
        """Patients whose compartment the principal may enter at all; ``None`` means no patient bound."""
        if principal.patient:
            return frozenset({principal.patient})
        if principal.group_ref:
            group_type, _, group_id = principal.group_ref.partition("/")
            group = await self.store.read(group_type, group_id)
            members = group.get("member", []) if group else []
            return frozenset(
                m["entity"]["reference"].removeprefix("Patient/")
                for m in members
                if not m.get("inactive") and m.get("entity", {}).get("reference", "").startswith("Patient/")
            )
        return None

    async def may_see(self, principal: Principal, resource: dict[str, Any]) -> Decision:
        """Whether ``principal`` may see ``resource`` (a patient-compartment resource)."""
        subject = _subject_patient(resource)
        if subject is None:
            return self._log(principal, resource, Decision(False, "resource has no reconciled patient"))
        reachable = await self.reachable_patients(principal)
        if reachable is None:
            return self._log(principal, resource, Decision(False, "authorization is bound to no patient"))
        if subject not in reachable:
            return self._log(
                principal, resource, Decision(False, f"patient {subject} is outside the authorization")
            )
        return self._log(
            principal, resource, Decision(True, f"patient {subject} is within the authorization")
        )

    @staticmethod
    def _log(principal: Principal, resource: dict[str, Any], decision: Decision) -> Decision:
        log.debug(
            "policy %s %s/%s for client %s: %s",
            "allow" if decision.allowed else "deny",
            resource.get("resourceType"),
            resource.get("id"),
            principal.client_id,
            decision.why,
        )
        return decision


def _subject_patient(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return str(resource["id"])
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    return ref.removeprefix("Patient/") if isinstance(ref, str) and ref.startswith("Patient/") else None
