"""AuditEvents the EHR writes about itself (IHE BALP; security.md AU-01, AU-03, AU-07, AU-08, AU-09).

Every FHIR interaction by an authenticated caller, every Bulk Data export and every authorization
event (token issued or refreshed, consent granted or denied, revocation, registration change) is
recorded as a FHIR R4 ``AuditEvent`` stored with the other resources. One request writes one
AuditEvent per patient whose data it touched (one for the usual single-patient request), in one
transaction, so a patient's access report (``AuditEvent?patient=``) lists the accesses to that
patient's data and never names another patient.

Shape (IHE Basic Audit Log Patterns): ``type``/``subtype`` codes, ``action``, ``recorded``,
``outcome`` and ``outcomeDesc`` (the policy engine's ``why``), the requesting ``agent`` (the
client id and the ``fhirUser``, with the token's id in ``agent.policy``, never the token: BALP
"OAUTHaccessTokenUse" opaque pattern), ``source`` = this EHR, and ``entity`` = the patient, the
resources disclosed and the query. Secrets (tokens, codes, assertions) never enter an event.

AU-09: a policy decision that hid data is recorded, and the record stays out of the requester's
sight through the same policy: the event carries the labels the requester's access hides in its
``meta.security`` and names what a Consent withholds, so the rules that hid the data hide the
record of hiding it too. An event naming a resource is hidden from whoever may not see that
resource now (the policy engine's AuditEvent rule), whatever labels it had when the event was written.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from weakref import WeakKeyDictionary

from starlette.requests import Request

from imagebridge.common import balp
from imagebridge.common.balp import DCM
from imagebridge.common.smart_scopes import Scope
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.dates import now_instant
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.policy.engine import PolicyView, subject_patient
from imagebridge.ehr.policy.labels import Label
from imagebridge.ehr.policy.relationships import PatientAccess

log = logging.getLogger(__name__)

EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
#: Our own subtype codes for authorization events (no standard code system names them).
EHR_EVENT: Final = "urn:imagebridge:audit-event"


@dataclass(frozen=True)
class Kind:
    """What happened: BALP ``type`` + ``subtype`` and the ``action`` code (C R U D E)."""

    type: tuple[str, str, str]
    subtype: tuple[str, str, str]
    action: str


def _rest(code: str, action: str) -> Kind:
    return Kind((EVENT_TYPE, "rest", "Restful Operation"), (INTERACTION, code, code), action)


def _auth(code: str, display: str) -> Kind:
    return Kind((DCM, "110114", "User Authentication"), (EHR_EVENT, code, display), "E")


READ: Final = _rest("read", "R")
SEARCH: Final = _rest("search-type", "E")
CREATE: Final = _rest("create", "C")
UPDATE: Final = _rest("update", "U")
EXPORT: Final = Kind((DCM, "110106", "Export"), (INTERACTION, "operation", "$export"), "R")
TOKEN_ISSUED: Final = _auth("token-issued", "Access token issued")
TOKEN_REFRESHED: Final = _auth("token-refreshed", "Access token refreshed")
TOKEN_REVOKED: Final = _auth("token-revoked", "Token revoked")
CONSENT_GRANTED: Final = _auth("consent-granted", "Authorization granted by the user")
CONSENT_DENIED: Final = _auth("consent-denied", "Authorization denied by the user")
REGISTRATION: Final = Kind(
    (DCM, "110137", "User Security Attributes Changed"),
    (EHR_EVENT, "registration-changed", "Client registration changed"),
    "U",
)


@dataclass(frozen=True)
class Actor:
    """Who asked: the client, the user (``fhirUser``), the token's id (never the token) and address."""

    client_id: str | None
    user: str | None = None
    grant_id: str | None = None  # common.tokens.token_id of the presented token
    address: str | None = None


@dataclass
class Disclosure:
    """What one request did to one patient's record (``patient`` None: no patient's data)."""

    patient: str | None
    what: list[str] = field(default_factory=list)  # references disclosed or asked for
    why: str = ""
    labels: frozenset[Label] = frozenset()  # of what it names, and the hiding rules applied (AU-09)
    allowed: bool = True
    notes: list[str] = field(default_factory=list)


def outcome_code(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(
    kind: Kind,
    actor: Actor,
    source: str,
    status: int,
    disclosure: Disclosure,
    query: str | None = None,
    recorded: str | None = None,
) -> dict[str, Any]:
    """One BALP-shaped AuditEvent (FHIR R4 AuditEvent)."""
    entities: list[dict[str, Any]] = []
    if disclosure.patient:
        entities.append(balp.entity({"reference": f"Patient/{disclosure.patient}"}, balp.PATIENT))
    entities.extend(balp.entity({"reference": ref}, balp.RESOURCE) for ref in disclosure.what)
    if query is not None:
        entity = balp.entity(None, balp.QUERY)
        entity["query"] = base64.b64encode(query.encode()).decode()
        entities.append(entity)
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(kind.type),
        "subtype": [_coding(kind.subtype)],
        "action": kind.action,
        "recorded": recorded or now_instant(),
        "outcome": outcome_code(status),
        "agent": balp.agents(actor.client_id, actor.grant_id, actor.user, actor.address),
        "source": balp.source("imagebridge EHR", source),
        "entity": entities,
    }
    if disclosure.why:
        event["outcomeDesc"] = disclosure.why[:2000]
    if disclosure.labels:
        event["meta"] = {"security": [{"system": s, "code": c} for s, c in sorted(disclosure.labels)]}
    return event


def _coding(code: tuple[str, str, str]) -> dict[str, str]:
    return {"system": code[0], "code": code[1], "display": code[2]}


#: Disclosures completed after the response (e.g. counting what the policy hid, AU-09).
Later = Callable[[], Awaitable[Sequence[Disclosure]]]


@dataclass
class _Queued:
    kind: Kind
    actor: Actor
    status: int
    disclosures: Sequence[Disclosure] | Later
    query: str | None
    recorded: str


class AuditTrail:
    """Writes the EHR's AuditEvents behind the responses, in batches (group commit).

    :meth:`record` queues a request's events and returns at once; one task of this process
    completes them (:data:`Later`) and commits everything queued in one transaction, then whatever
    arrived meanwhile. A read of AuditEvents first waits for the queue (:meth:`flush`), so a
    report always shows what this process has already answered. A failure is retried, never dropped.
    """

    def __init__(self, store: Store, source: str) -> None:
        self.store = store
        self.source = source
        self._queued: list[_Queued] = []
        self._ready: list[dict[str, Any]] = []
        self._writer: asyncio.Task[None] | None = None

    def record(
        self,
        kind: Kind,
        actor: Actor,
        status: int,
        disclosures: Sequence[Disclosure] | Later = (),
        query: str | None = None,
    ) -> None:
        """Queue one AuditEvent per disclosure (at least one); they are committed together."""
        self._queued.append(_Queued(kind, actor, status, disclosures, query, now_instant()))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every queued event is committed."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def _drain(self) -> None:
        while self._queued or self._ready:
            try:
                while self._queued:
                    item = self._queued[0]
                    found = (
                        item.disclosures
                        if isinstance(item.disclosures, Sequence)
                        else await item.disclosures()
                    )
                    self._ready.extend(
                        audit_event(
                            item.kind, item.actor, self.source, item.status, d, item.query, item.recorded
                        )
                        for d in (found or [Disclosure(None)])
                    )
                    self._queued.pop(0)
                batch, self._ready = self._ready, []
                try:
                    await self.store.create_many(batch, flush=False)
                except Exception:
                    self._ready[:0] = batch
                    raise
            except Exception:
                log.exception("AuditEvents could not be written yet; retrying")
                await asyncio.sleep(1.0)


_TRAILS: WeakKeyDictionary[Store, AuditTrail] = WeakKeyDictionary()


def trail(ctx: EhrContext) -> AuditTrail:
    """This process's trail for the EHR of ``ctx`` (created on first use)."""
    found = _TRAILS.get(ctx.store)
    if found is None:
        found = _TRAILS[ctx.store] = AuditTrail(ctx.store, ctx.settings.fhir_base)
    return found


def authorization_event(
    ctx: EhrContext,
    kind: Kind,
    request: Request | None,
    client_id: str,
    *,
    user: str | None = None,
    patient: str | None = None,
    why: str = "",
    grant_id: str | None = None,
) -> None:
    """Record an authorization event (security.md AU-08): a grant, a refusal, a revocation, a
    registration change. Scopes go in ``why``; never a token or code."""
    actor = Actor(client_id, user, grant_id, request.client.host if request and request.client else None)
    trail(ctx).record(kind, actor, 200, [Disclosure(patient, why=why)])


def _hides_anything(access: PatientAccess) -> bool:
    return bool(access.hidden_labels or access.withheld or access.withheld_types)


def hiding(
    view: PolicyView, scopes: Sequence[Scope], patients: Iterable[str]
) -> dict[str, list[PatientAccess]]:
    """The patients among ``patients`` whose access under ``scopes`` hides something (labels, Consent)."""
    found: dict[str, list[PatientAccess]] = {}
    for patient in patients:
        rules = [a for a in view.accesses(patient, scopes) if _hides_anything(a)]
        if rules:
            found[patient] = rules
    return found


def read_disclosure(view: PolicyView, scopes: Sequence[Scope], resource: dict[str, Any]) -> Disclosure:
    """A read: the resource, its patient and the decision's ``why``; when refused, the event takes
    the labels this access hides (AU-09)."""
    decision = view.decide(resource, scopes)
    patient = subject_patient(resource)
    labels: set[Label] = set()
    if not decision.allowed and patient is not None:
        labels |= {label for a in view.accesses(patient, scopes) for label in a.hidden_labels}
    ref = f"{resource.get('resourceType')}/{resource.get('id')}"
    return Disclosure(patient, [ref], decision.why, frozenset(labels), decision.allowed)


def search_disclosures(
    view: PolicyView,
    scopes: Sequence[Scope],
    asked: str | None,
    shown: Sequence[dict[str, Any]],
    hidden: int,
    rules: dict[str, list[PatientAccess]],
) -> list[Disclosure]:
    """A search: per patient, what was shown and why; where the policy hid ``hidden`` matches, the
    events of the patients whose access hides things say so, carry the hidden labels and name what
    a Consent withholds (security.md AU-09)."""
    by_patient: dict[str | None, Disclosure] = {}
    if asked is not None:
        by_patient[asked] = Disclosure(asked)
    for resource in shown:
        patient = subject_patient(resource)
        disclosure = by_patient.setdefault(patient, Disclosure(patient))
        disclosure.what.append(f"{resource['resourceType']}/{resource['id']}")
    if hidden:
        for patient, accesses in rules.items():
            disclosure = by_patient.setdefault(patient, Disclosure(patient))
            disclosure.labels |= {label for a in accesses for label in a.hidden_labels}
            disclosure.what.extend(sorted({ref for a in accesses for ref in a.withheld}))
            reasons = [
                *(
                    f"labels {','.join(sorted(c for _, c in a.hidden_labels))} hidden because {a.why}"
                    for a in accesses
                    if a.hidden_labels
                ),
                *(note for a in accesses for note in a.notes),
            ]
            disclosure.notes.append(
                f"the policy withheld {hidden} matching resource(s) from this request ({'; '.join(reasons)})"
            )
    for patient, disclosure in by_patient.items():
        if patient is not None:
            disclosure.why = "; ".join(
                [
                    *(
                        f"{s.to_string()}: {a.why}"
                        for s in scopes
                        if (a := view.reach.get(s.level, {}).get(patient))
                    ),
                    *disclosure.notes,
                ]
            )
    return list(by_patient.values())
