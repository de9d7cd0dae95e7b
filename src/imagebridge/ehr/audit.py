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
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from weakref import WeakKeyDictionary

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from imagebridge.common import balp
from imagebridge.common.audit_journal import CLOSE_SECONDS, RETRY_SECONDS, Entry, Journal, Origin
from imagebridge.common.balp import DCM
from imagebridge.common.smart_scopes import Scope
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.fhir.dates import now_instant
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.policy.engine import PolicyView, subject_patient
from imagebridge.ehr.policy.labels import Label
from imagebridge.ehr.policy.relationships import PatientAccess
from imagebridge.ehr.tables import resources

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
#: A batch Bundle refused whole (each entry of one that is processed is audited as its interaction).
BATCH: Final = _rest("batch", "E")
EXPORT: Final = Kind((DCM, "110106", "Export"), (INTERACTION, "operation", "$export"), "R")
TOKEN_ISSUED: Final = _auth("token-issued", "Access token issued")
TOKEN_REFRESHED: Final = _auth("token-refreshed", "Access token refreshed")
TOKEN_REVOKED: Final = _auth("token-revoked", "Token revoked")
TOKEN_REFUSED: Final = _auth("token-refused", "Token request refused")
#: Repeated refusals (security.md AU-02; DICOM PS3.15 A.5.3.11 Security Alert).
SECURITY_ALERT: Final = Kind(
    (DCM, "110113", "Security Alert"), (EHR_EVENT, "repeated-refusals", "Repeated refused requests"), "E"
)
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
#: Where an EHR keeps its audit journal, under its data directory.
JOURNAL_DIR = "audit-journal"
#: ``outcomeDesc`` of the events of a request answered 503 because they could not be made durable.
UNDURABLE = "answered 503: the AuditEvent could not be made durable"
#: ``outcomeDesc`` of the stand-in event of a request whose disclosures were still being
#: completed when its process ended (it names the caller and the query, not the patients).
UNFINISHED = "the process ended before this request's disclosures were completed"


@dataclass(frozen=True)
class _Pending:
    """A request whose disclosures are completed after its response (:data:`Later`)."""

    kind: Kind
    actor: Actor
    status: int
    query: str | None
    recorded: str
    disclosures: Later


class AuditTrail:
    """Journals the EHR's AuditEvents before each response and commits them behind it, in batches.

    :meth:`record` appends a request's events to the audit journal
    (:mod:`imagebridge.common.audit_journal`: one write, safe from a killed process) and returns;
    one task of this process commits them, many requests per transaction. A request whose
    disclosures come later (:data:`Later`) journals a stand-in event at once and its completed
    events as soon as they are known; the stand-in is written only if the process ended before.
    A read of AuditEvents first settles the journal of every process sharing it (:meth:`flush`).
    A failure is retried, never dropped.
    """

    def __init__(self, store: Store, source: str, journal_dir: Path, *, fsync: bool = False) -> None:
        self.store = store
        self.source = source
        self.journal = Journal(journal_dir, self._commit, fsync=fsync, refused=refused_entry)
        #: Requests whose disclosures are being completed, by their stand-in's id.
        self._completing: dict[str, asyncio.Task[None]] = {}

    def record(
        self,
        kind: Kind,
        actor: Actor,
        status: int,
        disclosures: Sequence[Disclosure] | Later = (),
        query: str | None = None,
    ) -> None:
        """Journal one AuditEvent per disclosure (at least one); they are committed together."""
        recorded = now_instant()
        if isinstance(disclosures, Sequence):
            events = [
                self._event(kind, actor, status, d, query, recorded)
                for d in disclosures or [Disclosure(None)]
            ]
            self.journal.append({"events": events})
            return
        stand_in = self._event(kind, actor, status, Disclosure(None, why=UNFINISHED), query, recorded)
        self.journal.append({"later": stand_in})
        pending = _Pending(kind, actor, status, query, recorded, disclosures)
        self._completing[stand_in["id"]] = asyncio.get_running_loop().create_task(
            self._complete(stand_in["id"], pending)
        )

    async def start(self) -> None:
        """Commit what ended processes journaled and never committed (at startup, then periodically)."""
        await self.journal.start()

    async def flush(self) -> None:
        """Commit every event journaled so far by any EHR process sharing the journal (before a read)."""
        if self._completing:
            await asyncio.wait(list(self._completing.values()))
        await self.journal.settle()

    async def aclose(self) -> None:
        """Commit what this process journaled and retire its journal (on shutdown)."""
        if self._completing:
            await asyncio.wait(list(self._completing.values()), timeout=CLOSE_SECONDS)
        await self.journal.aclose()

    def _event(
        self, kind: Kind, actor: Actor, status: int, disclosure: Disclosure, query: str | None, recorded: str
    ) -> dict[str, Any]:
        event = audit_event(kind, actor, self.source, status, disclosure, query, recorded)
        return {"id": uuid.uuid4().hex, **event}

    async def _complete(self, key: str, p: _Pending) -> None:
        """Journal the completed events of the request whose stand-in is ``key``."""
        while True:
            try:
                found = await p.disclosures()
                break
            except Exception:
                log.exception("the disclosures of an audited request could not be completed yet; retrying")
                await asyncio.sleep(RETRY_SECONDS)
        events = [
            self._event(p.kind, p.actor, p.status, d, p.query, p.recorded)
            for d in found or [Disclosure(None)]
        ]
        self.journal.append({"events": events, "completes": key})

    async def _commit(self, entries: Sequence[Entry], origin: Origin) -> list[Entry]:
        """Create the journaled events; a dead process's stand-in only when no completion of it
        follows (``dead-partial``: one may follow in its next segments, so it is held back)."""
        completed = {entry.get("completes") for entry in entries}
        events: list[dict[str, Any]] = []
        held: list[Entry] = []
        for entry in entries:
            events.extend(entry.get("events", ()))
            stand_in = entry.get("later")
            if stand_in is None:
                continue
            key = stand_in["id"]
            if origin == "own":
                task = self._completing.pop(key, None)
                if task is not None:
                    await asyncio.shield(task)  # its completion is journaled before the stand-in goes
            elif key in completed:
                pass
            elif origin == "dead":
                events.append(stand_in)  # the process ended before completing it
            elif origin == "dead-partial":
                held.append(entry)
            # "live": the process that journaled it completes it
        # an event found twice (a rewrite whose supersede line a power loss tore,
        # common/audit_journal.py) is created once, as its later copy: the one saying what was answered
        await self._create(list({event["id"]: event for event in events}.values()))
        return held

    async def _create(self, events: list[dict[str, Any]]) -> None:
        """Create ``events`` in one transaction, skipping those already there (a replay), except
        one saying its request was answered 503 instead (:func:`refused_entry`; another process
        settling the journal created it before it was amended): it replaces the one there.

        The commit waits for PostgreSQL's WAL flush only for an fsync journal: its segments may be
        retired once committed, and must not take the power-loss promise with them.
        """
        if not events:
            return
        flush = self.journal.fsync
        try:
            await self.store.create_many(events, flush=flush)
        except IntegrityError:
            async with self.store.engine.connect() as conn:
                found = await conn.execute(
                    select(resources.c.id).where(
                        resources.c.resource_type == "AuditEvent",
                        resources.c.id.in_([e["id"] for e in events]),
                    )
                )
                there = set(found.scalars())
            await self.store.create_many([e for e in events if e["id"] not in there], flush=flush)
            for event in events:
                if event["id"] in there and _says_503(event):
                    stored = await self.store.read("AuditEvent", event["id"])
                    if stored is not None and not _says_503(stored):
                        await self.store.put(event)


def refused_entry(entry: Entry) -> Entry:
    """``entry``'s events once their request is answered 503 instead (the journal could not make
    them durable, common/audit_journal.py): outcome 8 (serious failure), saying why."""
    amended = dict(entry)
    if "events" in entry:
        amended["events"] = [_answered_503(event) for event in entry["events"]]
    if "later" in entry:
        amended["later"] = _answered_503(entry["later"])
    return amended


def _says_503(event: dict[str, Any]) -> bool:
    """``event`` is one of a request answered 503 for want of a durable record (:func:`refused_entry`)."""
    return str(event.get("outcomeDesc", "")).startswith(UNDURABLE)


def _answered_503(event: dict[str, Any]) -> dict[str, Any]:
    why = event.get("outcomeDesc")
    return {**event, "outcome": "8", "outcomeDesc": f"{UNDURABLE}; {why}"[:2000] if why else UNDURABLE}


_TRAILS: WeakKeyDictionary[Store, AuditTrail] = WeakKeyDictionary()


def trail(ctx: EhrContext) -> AuditTrail:
    """This process's trail for the EHR of ``ctx`` (created on first use)."""
    found = _TRAILS.get(ctx.store)
    if found is None:
        found = _TRAILS[ctx.store] = AuditTrail(
            ctx.store,
            ctx.settings.fhir_base,
            ctx.settings.data_dir / JOURNAL_DIR,
            fsync=ctx.settings.audit_fsync,
        )
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
    status: int = 200,
) -> None:
    """Record an authorization event (security.md AU-08): a grant, a refusal, a revocation, a
    registration change. Scopes go in ``why``; never a token or code."""
    actor = Actor(client_id, user, grant_id, request.client.host if request and request.client else None)
    trail(ctx).record(kind, actor, status, [Disclosure(patient, why=why)])


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
