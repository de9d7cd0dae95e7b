"""What an EHR worker remembers between introspections (RFC 7662), never past a change to its source.

The imaging system introspects for every request it has not cached, each time authenticating with
its own token; answering from the database alone means reading both tokens, the policy's data
and every study of the patient. A worker remembers token lookups and imaging grants instead, and
reads two change counters (``generations``, bumped by database triggers in the transaction of each
change: migration 0003; ``resources`` is the sum of the shards of migration 0004, which let
concurrent writers of different resources bump different rows) once per introspection:

* ``credentials`` moves with any update or deletion of a token (revocation, refresh rotation, a
  user disabled) or of a client registration: every remembered token lookup is dropped, so a token
  revoked through any worker or the admin CLI is inactive at the next introspection everywhere,
  and so is every remembered client registration (the token endpoint verifies assertions against
  it: a rotated key, a narrowed scope or a disabled client counts at the next request);
* ``resources`` moves with any write of a FHIR resource other than an AuditEvent (studies, labels,
  Consent, RelatedPerson, Patient, Group…): every remembered included resource (the Endpoint each
  ImagingStudy of a search page names) is dropped. A patient's imaging grant is dropped by a write
  in that patient's compartment or outside every compartment (the ``patients`` and ``directory``
  shards of migration 0005), not by writes for other patients;
* ``clients`` (migration 0007) moves with any insert, update or deletion of a client registration:
  the origins of the registered clients' redirect URIs, which the EHR's CORS grants (ehr/cors.py),
  are read again.

Requests arriving while a read of the counters is under way share the next read (never the one
under way, which may predate a change committed before they arrived).

A grant also depends on the clock (ages, Consent and relationship periods), so one is kept at most
:data:`GRANT_SECONDS`. Expiry is checked on every use (:meth:`Grant.active`). Unknown tokens are
never remembered, nor are unknown clients. Without the counters (a database not migrated to 0003)
nothing is remembered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.tokens import digest
from imagebridge.ehr.policy.engine import Principal
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.tables import generations

#: The longest an imaging grant is reused (its time-dependent rules: ages, periods).
GRANT_SECONDS: Final = 1.0
#: Entries per table; the oldest goes first when full.
MAX_ENTRIES: Final = 4096
#: Rows of the per-patient counter (migration 0005: ``patients.<last id character mod 16>``).
PATIENT_SHARDS: Final = 16

_COUNTERS: Final = select(generations.c.name, generations.c.value)

K = TypeVar("K")
V = TypeVar("V")
Found = tuple[Grant, Client | None]


@dataclass(frozen=True)
class Generation:
    """The change counters as one request read them."""

    credentials: int
    resources: int
    #: Writes in the compartments of the patients of each shard (migration 0005; empty before).
    patients: tuple[int, ...] = ()
    #: Writes of resources outside every patient compartment (migration 0005).
    directory: int = 0
    #: Client registrations added, changed or removed (migration 0007; None before).
    clients: int | None = None

    def grant_stamp(self, patient: str | None) -> tuple[int, ...]:
        """The counts an imaging grant for ``patient`` depends on: its compartment's shard and the
        data outside every compartment (without the counters of 0005: every write)."""
        if patient and len(self.patients) == PATIENT_SHARDS:
            return (self.directory, self.patients[ord(patient[-1]) % PATIENT_SHARDS])
        return (self.resources,)


async def read_generation(engine: AsyncEngine) -> Generation | None:
    """The current counters (one indexed read), or None when the table is missing or incomplete."""
    try:
        async with engine.connect() as conn:
            rows = {name: value for name, value in (await conn.execute(_COUNTERS)).all()}
    except DBAPIError:
        return None
    if "credentials" not in rows or "resources" not in rows:
        return None
    sums: dict[str, int] = {}  # the shards of migrations 0004 and 0005 (with the row of 0003)
    for name, value in rows.items():
        kind = name.partition(".")[0]
        sums[kind] = sums.get(kind, 0) + int(value)
    patients = tuple(rows.get(f"patients.{k}") for k in range(PATIENT_SHARDS))
    return Generation(
        int(rows["credentials"]),
        sums["resources"],
        tuple(int(v) for v in patients if v is not None) if None not in patients else (),
        sums.get("directory", 0),
        int(rows["clients"]) if "clients" in rows else None,
    )


class _Table(Generic[K, V]):
    """Entries valid for one counter value; a higher value empties the table."""

    def __init__(self) -> None:
        self.at = -1
        self.entries: dict[K, V] = {}

    def get(self, at: int, key: K) -> V | None:
        if at > self.at:
            self.at, self.entries = at, {}
        return self.entries.get(key) if at == self.at else None

    def put(self, at: int, key: K, value: V) -> None:
        """Keep ``value``, read after the counter was ``at``, unless the table has moved past it."""
        if at > self.at:
            self.at, self.entries = at, {}
        if at != self.at:
            return
        if len(self.entries) >= MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]
        self.entries[key] = value


async def _credential(
    table: _Table[str, V],
    generation: Generation | None,
    key: str,
    name: str,
    load: Callable[[str], Awaitable[V | None]],
) -> V | None:
    """``load(name)``, remembered in ``table`` under ``key`` while the credentials counter stands."""
    if generation is None:
        return await load(name)
    found = table.get(generation.credentials, key)
    if found is None:
        found = await load(name)
        if found is not None:
            table.put(generation.credentials, key, found)
    return found


class Memo:
    """One worker's remembered token lookups, client registrations, registered origins and imaging
    grants."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[AsyncEngine], Awaitable[Generation | None]] = read_generation,
    ) -> None:
        self._clock = clock
        self._read_counters = read
        self._tokens: _Table[str, Found] = _Table()
        self._clients: _Table[str, Client] = _Table()
        #: principal → (the counts it was computed under, when its computation began, grant)
        self._grants: dict[Principal, tuple[tuple[int, ...], float, dict[str, Any]]] = {}
        self._included: _Table[tuple[str, str], dict[str, Any]] = _Table()
        #: (the clients counter it was read under, the registered origins)
        self._origins: tuple[int, frozenset[str]] | None = None
        #: Grants being computed, by counter value and principal: asked again meanwhile, awaited.
        self._computing: dict[tuple[tuple[int, ...], Principal], asyncio.Task[dict[str, Any]]] = {}
        #: The next read of the counters, shared by every request that arrives before it starts.
        self._next_read: asyncio.Future[Generation | None] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def generation(self, engine: AsyncEngine) -> Generation | None:
        """The counters as read by a read that began after this call (so no change committed before
        the call is missed); requests arriving while a read is under way share the next one."""
        if self._next_read is None:
            self._next_read = asyncio.get_running_loop().create_future()
        answer = self._next_read
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(engine))
        return await asyncio.shield(answer)

    async def _read(self, engine: AsyncEngine) -> None:
        while self._next_read is not None:
            answer, self._next_read = self._next_read, None
            try:
                answer.set_result(await self._read_counters(engine))
            except Exception as exc:  # handed to every request that shared the read
                answer.set_exception(exc)

    async def token(
        self, generation: Generation | None, secret: str, load: Callable[[str], Awaitable[Found | None]]
    ) -> Found | None:
        """The access grant behind ``secret`` and its client, as ``load`` finds them (active or not).

        ``generation`` must have been read before this call: what ``load`` reads is then at least
        as new as the counter it is filed under.
        """
        return await _credential(self._tokens, generation, digest(secret), secret, load)

    async def client(
        self, generation: Generation | None, client_id: str, load: Callable[[str], Awaitable[Client | None]]
    ) -> Client | None:
        """The registration of ``client_id`` as ``load`` finds it (enabled or not), for verifying its
        assertions (SMART Backend Services: its keys and scope). Any update or deletion of a
        registration moves the credentials counter; a client not found is never remembered.

        ``generation`` must have been read before this call, as for :meth:`token`.
        """
        return await _credential(self._clients, generation, client_id, client_id, load)

    async def origins(
        self, generation: Generation | None, load: Callable[[], Awaitable[frozenset[str]]]
    ) -> frozenset[str]:
        """The registered clients' origins as ``load`` reads them, kept while the clients counter
        stands (read anew on every call without it).

        ``generation`` must have been read before this call, as for :meth:`token`.
        """
        at = None if generation is None else generation.clients
        if at is not None and self._origins is not None and self._origins[0] == at:
            return self._origins[1]
        found = await load()
        if at is not None and (self._origins is None or self._origins[0] < at):
            self._origins = (at, found)
        return found

    async def included(
        self,
        resources: int | None,
        refs: Sequence[tuple[str, str]],
        load: Callable[[Sequence[tuple[str, str]]], Awaitable[list[dict[str, Any]]]],
    ) -> list[dict[str, Any]]:
        """The resources ``refs`` names (type, id) that exist, as ``load`` reads them, in ``refs``'
        order (shared: callers must not change them).

        ``resources`` is the resources counter read before this call (None: nothing remembered);
        a resource is remembered under it, so a later write of any resource drops it.
        """
        if resources is None:
            return await load(refs)
        found = {ref: kept for ref in refs if (kept := self._included.get(resources, ref)) is not None}
        missing = [ref for ref in refs if ref not in found]
        if missing:
            for resource in await load(missing):
                ref = (str(resource["resourceType"]), str(resource["id"]))
                self._included.put(resources, ref, resource)
                found[ref] = resource
        return [found[ref] for ref in refs if ref in found]

    async def imaging_grant(
        self,
        generation: Generation | None,
        principal: Principal,
        compute: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The imaging grant of ``principal`` (shared: callers must not change it), remembered while
        the counts it depends on stand (:meth:`Generation.grant_stamp`: a write in another patient's
        compartment keeps it)."""
        if generation is None:
            return await compute()
        stamp = generation.grant_stamp(principal.patient)
        kept = self._grants.get(principal)
        if kept is not None and kept[0] == stamp and self._clock() - kept[1] < GRANT_SECONDS:
            return kept[2]
        key = (stamp, principal)
        task = self._computing.get(key)
        if task is None:
            task = asyncio.ensure_future(self._compute(key, compute))
            self._computing[key] = task
            task.add_done_callback(lambda _: self._computing.pop(key, None))
        return await asyncio.shield(task)  # one caller going away does not cancel the others' answer

    async def _compute(
        self, key: tuple[tuple[int, ...], Principal], compute: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        started = self._clock()
        answer = await compute()
        if len(self._grants) >= MAX_ENTRIES and key[1] not in self._grants:
            del self._grants[next(iter(self._grants))]
        self._grants[key[1]] = (key[0], started, answer)
        return answer
