"""Who may enter which patient's record, and with which limits (ARCHITECTURE.md "Policy").

Each relationship yields, per patient, a :class:`PatientAccess`: the labels it hides and why.

- self: ``fhirUser`` is the patient (or a patient-context token names no other user);
- proxy: ``fhirUser`` is a ``RelatedPerson`` that is active, within its ``period``, and whose
  ``patient`` is the record; a proxy of a 13–17-year-old does not see studies labeled sensitive;
- clinician: ``fhirUser`` is a ``Practitioner`` whose active ``PractitionerRole`` belongs to the
  patient's ``managingOrganization``, or who takes part in an active ``CareTeam`` of the patient;
  restricted (``R``/``V``) resources need a role carrying :data:`RESTRICTED_ACCESS_ROLE`;
- backend: a backend client reaches the active members of the ``Group`` it was registered for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Final

from imagebridge.ehr.fhir.store import Query, Store, TokenCriterion
from imagebridge.ehr.policy.labels import RESTRICTED, SENSITIVE, Label

#: ``PractitionerRole.code`` coding that lets a clinician see restricted (R/V) resources.
RESTRICTED_ACCESS_ROLE: Final = ("urn:imagebridge:policy-role", "restricted-access")
ADOLESCENCE: Final = range(13, 18)
_ALL: Final = 100_000


@dataclass(frozen=True)
class PatientAccess:
    """How one authorization may see one patient's record."""

    why: str
    hidden_labels: frozenset[Label] = frozenset()
    withheld: frozenset[str] = frozenset()  # "ImagingStudy/<id>" withheld by consent (or by labels)
    withheld_types: frozenset[str] = frozenset()  # resource types withheld by consent
    notes: tuple[str, ...] = field(default=())

    def hides(self, resource: dict[str, Any], labels: frozenset[Label]) -> str | None:
        """Why this access does not show ``resource``, or None when it does."""
        rtype = str(resource.get("resourceType"))
        if rtype in self.withheld_types:
            return f"{rtype} withheld from this app by consent ({'; '.join(self.notes)})"
        hidden = labels & self.hidden_labels
        if hidden:
            return f"labeled {','.join(sorted(c for _, c in hidden))}, hidden because {self.why}"
        named = _named(resource)
        if named & self.withheld or {r.partition("/")[0] for r in named} & self.withheld_types:
            if self.notes:
                return f"withheld from this app by consent ({'; '.join(self.notes)})"
            return "it names a resource hidden by its labels"
        return None


Reach = dict[str, PatientAccess]


def _named(resource: dict[str, Any]) -> set[str]:
    """The references a resource stands for: itself, and for an AuditEvent what it records
    (an event naming a withheld study is withheld with it: security.md AU-09)."""
    if resource.get("resourceType") == "AuditEvent":
        return {
            str(ref)
            for entity in resource.get("entity") or []
            if isinstance(ref := (entity.get("what") or {}).get("reference"), str)
        }
    return {f"{resource.get('resourceType')}/{resource.get('id')}"}


def age_on(birth_date: str, today: date) -> int | None:
    try:
        born = date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _active(resource: dict[str, Any], now: str) -> bool:
    period = resource.get("period") or {}
    start, end = period.get("start"), period.get("end")
    return (
        resource.get("active", True) is not False
        and (not isinstance(start, str) or start <= now)
        and (not isinstance(end, str) or now <= end)
    )


def _ref_id(ref: Any, kind: str) -> str | None:
    value = (ref or {}).get("reference") if isinstance(ref, dict) else None
    return value.removeprefix(f"{kind}/") if isinstance(value, str) and value.startswith(f"{kind}/") else None


class Relationships:
    """Reads the relationship resources from the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def _search(self, resource_type: str, param: str, refs: list[str]) -> list[dict[str, Any]]:
        if not refs:
            return []
        return await self.store.find(
            Query(resource_type, [TokenCriterion(param, tuple((None, r) for r in refs))], count=_ALL)
        )

    async def of_user(self, fhir_user: str, now: str) -> tuple[Reach, str]:
        """The patients ``fhir_user`` may see, and why (when it is nobody)."""
        kind, _, uid = fhir_user.partition("/")
        if kind == "Patient" and uid:
            return {uid: PatientAccess(f"Patient/{uid} is the patient (self)")}, ""
        if kind == "RelatedPerson" and uid:
            return await self._proxy(uid, now)
        if kind == "Practitioner" and uid:
            return await self._clinician(uid, now)
        return {}, f"fhirUser {fhir_user!r} has no access rule"

    async def _proxy(self, related_id: str, now: str) -> tuple[Reach, str]:
        related = await self.store.read("RelatedPerson", related_id)
        if related is None or not _active(related, now):
            return {}, f"RelatedPerson/{related_id} is not an active proxy"
        patient_id = _ref_id(related.get("patient"), "Patient")
        patient = await self.store.read("Patient", patient_id) if patient_id else None
        if patient is None or patient_id is None:
            return {}, f"RelatedPerson/{related_id} names no patient"
        why = f"RelatedPerson/{related_id} is a proxy of Patient/{patient_id}"
        age = age_on(str(patient.get("birthDate", "")), date.fromisoformat(now[:10]))
        if age is None or age in ADOLESCENCE:
            # An unknown age is treated like an adolescent's: the safe side.
            return {patient_id: PatientAccess(f"{why} aged {age} (adolescent rule)", SENSITIVE)}, ""
        return {patient_id: PatientAccess(why)}, ""

    async def _clinician(self, practitioner_id: str, now: str) -> tuple[Reach, str]:
        me = f"Practitioner/{practitioner_id}"
        roles = [r for r in await self._search("PractitionerRole", "practitioner", [me]) if _active(r, now)]
        privileged = any(
            (c.get("system"), c.get("code")) == RESTRICTED_ACCESS_ROLE
            for role in roles
            for concept in role.get("code") or []
            for c in concept.get("coding") or []
        )
        hidden = frozenset() if privileged else RESTRICTED
        suffix = "" if privileged else " without the restricted-access role"
        reach: Reach = {}
        orgs = sorted({o for r in roles if (o := _ref_id(r.get("organization"), "Organization"))})
        for patient in await self._search("Patient", "organization", [f"Organization/{o}" for o in orgs]):
            reach[str(patient["id"])] = PatientAccess(
                f"{me} works for the patient's managing organization{suffix}", hidden
            )
        members = [me, *(f"PractitionerRole/{r['id']}" for r in roles)]
        for team in await self._search("CareTeam", "participant", members):
            patient_id = _ref_id(team.get("subject"), "Patient")
            if patient_id and team.get("status", "active") == "active" and _active(team, now):
                reach.setdefault(
                    patient_id, PatientAccess(f"{me} is on the patient's CareTeam{suffix}", hidden)
                )
        return reach, "" if reach else f"{me} has no organization or care-team relationship"

    async def of_group(self, group_ref: str) -> tuple[Reach, str]:
        """Active Patient members of the backend client's registered Group."""
        kind, _, gid = group_ref.partition("/")
        group = await self.store.read(kind, gid) if kind == "Group" else None
        if group is None:
            return {}, f"{group_ref} does not exist"
        reach: Reach = {}
        for member in group.get("member") or []:
            patient_id = _ref_id(member.get("entity"), "Patient")
            if patient_id and not member.get("inactive"):
                reach[patient_id] = PatientAccess(f"Patient/{patient_id} is a member of {group_ref}")
        return reach, ""

    async def consents(self, patients: list[str]) -> dict[str, list[dict[str, Any]]]:
        by_patient: dict[str, list[dict[str, Any]]] = {}
        for consent in await self._search("Consent", "patient", [f"Patient/{p}" for p in patients]):
            patient_id = _ref_id(consent.get("patient"), "Patient")
            if patient_id:
                by_patient.setdefault(patient_id, []).append(consent)
        return by_patient


def with_consent(access: PatientAccess, refs: set[str], types: set[str], why: list[str]) -> PatientAccess:
    if not refs and not types:
        return access
    return replace(
        access,
        withheld=access.withheld | frozenset(refs),
        withheld_types=access.withheld_types | frozenset(types),
        notes=access.notes + tuple(why),
    )
