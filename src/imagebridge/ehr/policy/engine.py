"""The one place that decides what an authorization may see (ARCHITECTURE.md "Policy").

Every path asks here: FHIR read and search, Bulk export, and what the imaging system is told
through introspection or through its FHIR queries made with the caller's own token.

A :class:`PolicyView` is built once per request from the data (relationships, Group, Consent,
labels; see ``relationships.py``, ``consent.py``, ``labels.py``). It answers per resource
(:meth:`PolicyView.decide`, with a ``why``) and as SQL (:meth:`PolicyView.sql`) so that searches
page correctly; both encode the same rules. Each granted scope is applied on its own with its
own level and query constraints, never combined with another (SMART App Launch 2.2; Argonaut IG
"each grant retains its own context and restrictions").

Levels: ``patient/`` scopes reach the token's patient context (through the user's relationship
to it); ``user/`` scopes reach the patients the ``fhirUser`` may see; ``system/`` scopes reach the
backend client's registered Group. Unreconciled resources (no patient) are visible to no one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from sqlalchemy import and_, exists, false, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from imagebridge.common.smart_scopes import Interaction, Level, Scope, ScopeSet
from imagebridge.ehr.fhir.dates import now_instant
from imagebridge.ehr.fhir.store import Store, has_token, token_matches
from imagebridge.ehr.policy import constraints
from imagebridge.ehr.policy.consent import withheld_from
from imagebridge.ehr.policy.labels import labels_of
from imagebridge.ehr.policy.relationships import PatientAccess, Reach, Relationships, with_consent
from imagebridge.ehr.tables import resources, search_tokens

log = logging.getLogger(__name__)

#: The longest a worker reuses one principal's view while the data stands still (the rules read
#: the clock: ages, periods of proxy links, roles and Consents).
VIEW_SECONDS: Final = 1.0
#: Views one worker keeps; the oldest goes first when full.
MAX_VIEWS: Final = 1024

#: Resources outside any patient compartment (directory data), visible with a covering scope.
DIRECTORY: Final = frozenset({"Organization", "Practitioner", "PractitionerRole", "Endpoint"})
#: Where a compartment resource names its patient.
_SUBJECT: Final = {
    "ImagingStudy": "subject",
    "DiagnosticReport": "subject",
    "CareTeam": "subject",
    "Consent": "patient",
    "RelatedPerson": "patient",
}


@dataclass(frozen=True)
class Principal:
    """The authorization behind a request: the client, its granted scopes and its context."""

    client_id: str
    scopes: ScopeSet
    patient: str | None = None  # patient context (logical id)
    fhir_user: str | None = None  # Patient/…, RelatedPerson/…, Practitioner/…
    group_ref: str | None = None  # the Group a backend client was pre-authorized for
    imaging_source: bool = False  # a backend client registered as an imaging source (any PatientID)

    @property
    def levels(self) -> frozenset[str]:
        return frozenset(s.level for s in self.scopes.resource_scopes)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str


def subject_patient(resource: dict[str, Any]) -> str | None:
    """The logical id of the patient whose compartment holds ``resource`` (None: unreconciled)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return str(resource.get("id"))
    if rtype == "AuditEvent":
        refs = [str((e.get("what") or {}).get("reference", "")) for e in resource.get("entity") or []]
    else:
        refs = [str((resource.get(_SUBJECT.get(str(rtype), "subject")) or {}).get("reference", ""))]
    return next((r.removeprefix("Patient/") for r in refs if r.startswith("Patient/")), None)


@dataclass
class PolicyView:
    """One principal's access, ready to decide per resource or to filter in SQL."""

    principal: Principal
    reach: dict[str, Reach]  # scope level → patients
    nobody: dict[str, str] = field(default_factory=dict)  # scope level → why it reaches no one
    #: :meth:`sql` answers, built once per view (a worker reuses a view between requests).
    _sql: dict[tuple[str, tuple[Scope, ...], bool], ColumnElement[bool]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def scopes_for(self, resource_type: str, interactions: Sequence[Interaction]) -> list[Scope]:
        found: dict[Scope, None] = {}
        for interaction in interactions:
            for scope in self.principal.scopes.allows(self.principal.levels, resource_type, interaction):
                found[scope] = None
        return list(found)

    def patients(self, scopes: Sequence[Scope]) -> frozenset[str]:
        """Every patient some scope reaches (a ``patient`` search outside these is 403)."""
        return frozenset(p for s in scopes for p in self.reach.get(s.level, {}))

    def decide(self, resource: dict[str, Any], scopes: Sequence[Scope], *, hiding: bool = True) -> Decision:
        """May the principal see ``resource`` under any one of ``scopes``?

        ``hiding=False`` leaves out what labels and Consents hide (twin of :meth:`sql` with
        ``hiding=False``: the resources the authorization reaches).
        """
        rtype = str(resource.get("resourceType"))
        reasons: list[str] = []
        for scope in scopes:
            try:
                found = constraints.criteria(scope, rtype)
            except constraints.UnusableConstraint as exc:
                reasons.append(f"{scope.to_string()}: unusable constraint ({exc})")
                continue
            if not constraints.matches(resource, found):
                reasons.append(f"{scope.to_string()}: outside the scope's query")
                continue
            decision = self._by_level(scope.level, resource, hiding)
            if decision.allowed:
                return self._log(resource, Decision(True, f"{scope.to_string()}: {decision.why}"))
            reasons.append(f"{scope.to_string()}: {decision.why}")
        why = "; ".join(reasons) or f"no granted scope covers {rtype}"
        return self._log(resource, Decision(False, why))

    def _by_level(self, level: str, resource: dict[str, Any], hiding: bool) -> Decision:
        rtype = str(resource.get("resourceType"))
        if rtype in DIRECTORY:
            return Decision(True, f"{rtype} is directory data")
        if rtype == "Group":
            mine = self.principal.group_ref == f"Group/{resource.get('id')}" and level == "system"
            return Decision(mine, "the client's own Group" if mine else "not the client's Group")
        patient = subject_patient(resource)
        if patient is None:
            return Decision(False, "unreconciled: the resource has no patient")
        access = self.reach.get(level, {}).get(patient)
        if access is None:
            return Decision(
                False, self.nobody.get(level) or f"Patient/{patient} is outside the authorization"
            )
        hidden = access.hides(resource, labels_of(resource)) if hiding else None
        return Decision(False, hidden) if hidden else Decision(True, access.why)

    def accesses(self, patient: str, scopes: Sequence[Scope]) -> list[PatientAccess]:
        """How each of ``scopes`` reaches ``patient`` (none: outside the authorization)."""
        found = (self.reach.get(s.level, {}).get(patient) for s in scopes)
        return list({id(a): a for a in found if a is not None}.values())

    def sql(self, resource_type: str, scopes: Sequence[Scope], *, hiding: bool = True) -> ColumnElement[bool]:
        """The rows of ``resource_type`` some scope lets the principal see (twin of :meth:`decide`).

        ``hiding=False`` leaves out what labels and Consents hide: the rows the authorization
        reaches, so that the difference counts what the policy hid (security.md AU-09).
        """
        key = (resource_type, tuple(scopes), hiding)
        built = self._sql.get(key)
        if built is None:
            built = self._sql[key] = self._build_sql(resource_type, scopes, hiding)
        return built

    def _build_sql(self, resource_type: str, scopes: Sequence[Scope], hiding: bool) -> ColumnElement[bool]:
        options: list[ColumnElement[bool]] = []
        for scope in scopes:
            try:
                found = constraints.criteria(scope, resource_type)
            except constraints.UnusableConstraint:
                continue
            options.append(
                and_(
                    constraints.sql(found, resource_type),
                    self._level_sql(scope.level, resource_type, hiding),
                )
            )
        return or_(false(), *options)

    def _level_sql(self, level: str, resource_type: str, hiding: bool) -> ColumnElement[bool]:
        if resource_type in DIRECTORY:
            return true()
        if resource_type == "Group":
            group = (self.principal.group_ref or "").partition("/")[2]
            return resources.c.id == group if level == "system" and group else false()
        if resource_type != "Patient" and resource_type not in _SUBJECT and resource_type != "AuditEvent":
            return false()
        by_rule: dict[tuple[frozenset[Any], frozenset[str], frozenset[str]], list[str]] = {}
        for patient, access in self.reach.get(level, {}).items():
            if not hiding:
                by_rule.setdefault((frozenset(), frozenset(), frozenset()), []).append(patient)
            elif resource_type not in access.withheld_types:
                rule = (access.hidden_labels, access.withheld, access.withheld_types)
                by_rule.setdefault(rule, []).append(patient)
        options = []
        for (labels, withheld, withheld_types), patients in by_rule.items():
            parts = [
                resources.c.id.in_(sorted(patients))
                if resource_type == "Patient"
                else has_token("patient", [(None, f"Patient/{p}") for p in sorted(patients)], resource_type)
            ]
            if labels:
                parts.append(_lacks_labels(sorted(labels), resource_type))
            parts.extend(_withheld_sql(resource_type, withheld, withheld_types))
            options.append(and_(*parts))
        return or_(false(), *options)

    def _log(self, resource: dict[str, Any], decision: Decision) -> Decision:
        log.debug(
            "policy %s %s/%s for client %s: %s",
            "allow" if decision.allowed else "deny",
            resource.get("resourceType"),
            resource.get("id"),
            self.principal.client_id,
            decision.why,
        )
        return decision


def _withheld_sql(
    resource_type: str, withheld: frozenset[str], withheld_types: frozenset[str]
) -> list[ColumnElement[bool]]:
    """SQL twin of the Consent part of :meth:`PatientAccess.hides`."""
    if resource_type == "AuditEvent":  # an event naming what is withheld is withheld with it
        by_param = (("entity", sorted(withheld)), ("entity-type", sorted(withheld_types)))
        return [
            not_(has_token(param, [(None, v) for v in values], resource_type))
            for param, values in by_param
            if values
        ]
    ids = sorted(r.partition("/")[2] for r in withheld if r.startswith(f"{resource_type}/"))
    return [resources.c.id.not_in(ids)] if ids else []


def _lacks_labels(labels: Sequence[tuple[str | None, str]], resource_type: str) -> ColumnElement[bool]:
    """SQL: the row carries none of the security ``labels``.

    Probed per candidate row through the ``ix_search_tokens_owner`` index (resource type, id), so
    the cost follows the rows the other criteria admit, not the number of labeled resources in the
    whole database (an uncorrelated ``NOT IN`` would list every one of those for each search).
    """
    return ~exists().where(
        search_tokens.c.resource_type == resource_type,
        search_tokens.c.id == resources.c.id,
        search_tokens.c.param == "_security",
        token_matches(labels),
    )


class PolicyEngine:
    """Builds :class:`PolicyView` s from the EHR's data."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.relationships = Relationships(store)
        self._clock = clock
        #: principal → (data version, when its build began, view)
        self._views: dict[Principal, tuple[int, float, PolicyView]] = {}

    async def view(
        self, principal: Principal, store: Store | None = None, *, data_version: int | None = None
    ) -> PolicyView:
        """The access of ``principal`` now, read from ``store`` (default: the engine's; a request
        passes its :meth:`Store.reading` so that all its reads share one connection).

        ``data_version`` is the EHR's resource change counter (``generations.resources``, bumped by
        a trigger in the transaction of every FHIR write except AuditEvents: migration 0003), read
        before this call. With it, this worker reuses the principal's view while the counter stands
        still, for at most :data:`VIEW_SECONDS`: a Consent, label or relationship written through
        any worker or the admin CLI applies to the very next request.
        """
        if data_version is not None:
            kept = self._views.get(principal)
            if kept is not None and kept[0] == data_version and self._clock() - kept[1] < VIEW_SECONDS:
                return kept[2]
        started = self._clock()
        view = await self._build(principal, store or self.store)
        if data_version is not None:
            if len(self._views) >= MAX_VIEWS and principal not in self._views:
                del self._views[next(iter(self._views))]
            self._views[principal] = (data_version, started, view)
        return view

    async def _build(self, principal: Principal, store: Store) -> PolicyView:
        relationships = Relationships(store)
        now = now_instant()
        reach: dict[str, Reach] = {}
        nobody: dict[str, str] = {}
        for level in principal.levels:
            reach[level], nobody[level] = await self._reach(relationships, principal, level, now)
        patients = sorted({p for r in reach.values() for p in r})
        consents = await relationships.consents(patients)
        for level_reach in reach.values():
            for patient, access in list(level_reach.items()):
                withheld = withheld_from(consents.get(patient, []), principal.client_id, now)
                level_reach[patient] = with_consent(access, withheld.references, withheld.types, withheld.why)
        if principal.scopes.allows(principal.levels, "AuditEvent", "r") or principal.scopes.allows(
            principal.levels, "AuditEvent", "s"
        ):
            await _hide_events_naming_hidden(store, reach)
        return PolicyView(principal, reach, {k: v for k, v in nobody.items() if v})

    @staticmethod
    async def _reach(
        relationships: Relationships, principal: Principal, level: Level | str, now: str
    ) -> tuple[Reach, str]:
        if level == "system":
            if not principal.group_ref:
                return {}, "system scopes reach no patient without a registered Group"
            return await relationships.of_group(principal.group_ref)
        if level == "user":
            if not principal.fhir_user:
                return {}, "user scopes need a fhirUser"
            return await relationships.of_user(principal.fhir_user, now)
        if not principal.patient:
            return {}, "patient scopes need a patient context"
        context = principal.patient
        if principal.fhir_user in (None, f"Patient/{context}"):
            return {context: PatientAccess(f"Patient/{context} is the patient in context (self)")}, ""
        user_reach, why = await relationships.of_user(str(principal.fhir_user), now)
        if context not in user_reach:
            return {}, why or f"{principal.fhir_user} may not see the patient in context"
        return {context: user_reach[context]}, ""

    async def may_see(
        self, principal: Principal, resource: dict[str, Any], interactions: Sequence[Interaction] = ("r", "s")
    ) -> Decision:
        """Whether ``principal`` may see ``resource`` (one-off; build a view for many)."""
        view = await self.view(principal)
        return view.decide(resource, view.scopes_for(str(resource.get("resourceType")), interactions))

    async def may_write(self, principal: Principal, resource_type: str, patient: str) -> Decision:
        """Whether ``principal`` may create ``resource_type`` in ``patient``'s compartment.

        A granted scope allowing ``c`` on the type, applied with its level and query as for reads:
        ``patient/`` reaches the patient in context, ``user/`` the patients the ``fhirUser`` may
        see, ``system/`` the registered Group's members; a Consent withholding the type from the
        client refuses (docs/policy.md "Writing imaging"). There is no separate write rule.
        """
        view = await self.view(principal)
        probe = {"resourceType": resource_type, "subject": {"reference": f"Patient/{patient}"}}
        return view.decide(probe, view.scopes_for(resource_type, ("c",)))

    async def visible(self, principal: Principal, found: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The resources of ``found`` the principal may read."""
        view = await self.view(principal)
        return [
            r
            for r in found
            if view.decide(r, view.scopes_for(str(r.get("resourceType")), ("r", "s"))).allowed
        ]


async def _hide_events_naming_hidden(store: Store, reach: dict[str, Reach]) -> None:
    """An AuditEvent naming a resource this access hides by its labels is hidden too, by the
    labels the resource has now (security.md AU-09): such resources join ``withheld``, which
    hides the events that name them (:meth:`PatientAccess.hides`)."""
    for level_reach in reach.values():
        for patient, access in list(level_reach.items()):
            labeled = await store.labeled(patient, sorted(access.hidden_labels))
            if labeled:
                level_reach[patient] = replace(access, withheld=access.withheld | labeled)
