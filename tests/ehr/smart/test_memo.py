"""The change counters behind what an EHR worker remembers (ehr/smart/memo.py, migration 0003), on
SQLite and PostgreSQL, and the memo's rules: a higher counter drops everything, an answer read
under an older counter is never filed, a grant lives at most GRANT_SECONDS, one computation at a
time, and a request never takes the counters from a read that began before it arrived."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import delete, insert, text

from imagebridge.common.settings import EhrSettings
from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.policy.engine import _SUBJECT, Principal
from imagebridge.ehr.smart.clients import Client
from imagebridge.ehr.smart.grants import Grant, GrantStore
from imagebridge.ehr.smart.memo import (
    GRANT_SECONDS,
    PATIENT_SHARDS,
    Found,
    Generation,
    Memo,
    read_generation,
)
from imagebridge.ehr.tables import clients, resources


@pytest.fixture
def settings(ehr_settings: EhrSettings) -> EhrSettings:
    return ehr_settings


def test_counters_move_with_every_change_they_stand_for(settings: EhrSettings) -> None:
    async def run() -> list[Generation | None]:
        admin = Admin(settings)
        grants = GrantStore(admin.engine)
        seen = [await read_generation(admin.engine)]
        try:
            await admin.add_client("app", "public", scope="patient/*.rs")
            secret = await grants.issue(Grant("app", "patient/*.rs", time.time() + 60, time.time()))
            seen.append(await read_generation(admin.engine))  # issuing changes nothing remembered
            await grants.revoke(secret)
            seen.append(await read_generation(admin.engine))
            await admin.clients.set_enabled("app", False)
            seen.append(await read_generation(admin.engine))
            await admin.put_resource({"resourceType": "Patient", "id": "p1"})
            seen.append(await read_generation(admin.engine))
            await admin.put_resource({"resourceType": "Patient", "id": "p1", "active": False})
            seen.append(await read_generation(admin.engine))
            await admin.put_resource({"resourceType": "AuditEvent", "id": "a1", "recorded": "2024-01-01"})
            seen.append(await read_generation(admin.engine))  # audit records change no decision
        finally:
            await admin.close()
        return seen

    seen = asyncio.run(run())
    assert [(g.credentials, g.resources) if g else None for g in seen] == [
        (0, 0),
        (0, 0),
        (1, 0),
        (2, 0),
        (2, 1),
        (2, 2),
        (2, 2),
    ]


def test_writers_of_different_resources_do_not_queue_on_one_counter(settings: EhrSettings) -> None:
    """PostgreSQL: a write bumps the counter shard of its resource id (migration 0004), so a writer
    does not wait for another's uncommitted write of a resource in another shard (under 0003 both
    updated one row: the second waited for the first to commit); the sum still counts both."""
    if not settings.database_url:
        pytest.skip("SQLite writers share one database-wide lock")

    def row(rid: str) -> dict[str, Any]:
        return {"resource_type": "Patient", "id": rid, "version": 1, "last_updated": "2024", "content": "{}"}

    async def run() -> tuple[Generation | None, Generation | None]:
        admin = Admin(settings)
        try:
            before = await read_generation(admin.engine)
            async with admin.engine.begin() as first:
                await first.execute(insert(resources).values(row("a1")))
                async with admin.engine.begin() as second:
                    await second.execute(text("SET LOCAL lock_timeout = '10s'"))  # fails rather than hangs
                    await second.execute(insert(resources).values(row("a2")))
            return before, await read_generation(admin.engine)
        finally:
            await admin.close()

    before, after = asyncio.run(run())
    assert before is not None
    assert after is not None
    assert (after.credentials, after.resources) == (before.credentials, before.resources + 2)


PRINCIPAL = Principal("app", parse_scopes("patient/ImagingStudy.rs"), patient="p1")
FOUND: Found = (Grant("app", "patient/*.rs", time.time() + 60, time.time()), None)


class Loads:
    """A token loader that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, _: str) -> Found | None:
        self.calls += 1
        return FOUND


def test_token_lookups_are_kept_until_the_credentials_counter_moves() -> None:
    memo, load = Memo(), Loads()

    async def run() -> None:
        for at in (Generation(5, 0), Generation(5, 0), Generation(5, 9)):
            assert await memo.token(at, "secret", load) == FOUND
        assert load.calls == 1  # the resources counter does not concern tokens
        await memo.token(Generation(6, 0), "secret", load)
        await memo.token(Generation(5, 0), "secret", load)  # read before the change: not answered from memory
        await memo.token(None, "secret", load)  # no counters: never remembered
        assert load.calls == 4

    asyncio.run(run())


def test_client_registrations_are_kept_until_the_credentials_counter_moves() -> None:
    """The token endpoint's registration lookups: read once while no credential changes, read again
    when the counter moves or was read before the change; an unknown client is never remembered."""
    memo, reads = Memo(), []
    client = Client("svc", "backend", "svc", "system/*.rs")

    async def load(client_id: str) -> Client | None:
        reads.append(client_id)
        return client if client_id == "svc" else None

    async def run() -> None:
        for at in (Generation(2, 0), Generation(2, 7), Generation(3, 0), Generation(2, 0), None):
            assert await memo.client(at, "svc", load) is client
        for _ in range(2):
            assert await memo.client(Generation(3, 0), "gone", load) is None

    asyncio.run(run())
    assert reads == ["svc", "svc", "svc", "svc", "gone", "gone"]


def test_included_resources_are_kept_until_the_resources_counter_moves() -> None:
    """An Endpoint a search page includes is read once while no resource changes; a write of any
    resource (the counter moves) reads it again; a reference to nothing is never remembered."""
    memo, reads = Memo(), []
    endpoint = {"resourceType": "Endpoint", "id": "wado"}

    async def load(refs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        reads.append(list(refs))
        return [endpoint] if ("Endpoint", "wado") in refs else []

    async def run() -> None:
        refs = [("Endpoint", "gone"), ("Endpoint", "wado")]
        for at in (3, 3, 4, 4, None):
            assert await memo.included(at, refs, load) == [endpoint]

    asyncio.run(run())
    assert reads == [
        [("Endpoint", "gone"), ("Endpoint", "wado")],
        [("Endpoint", "gone")],
        [("Endpoint", "gone"), ("Endpoint", "wado")],
        [("Endpoint", "gone")],
        [("Endpoint", "gone"), ("Endpoint", "wado")],
    ]


def test_an_answer_read_under_an_older_counter_is_not_filed() -> None:
    memo = Memo()
    slow_started, release = asyncio.Event(), asyncio.Event()

    async def slow(_: str) -> Found | None:
        slow_started.set()
        await release.wait()
        return FOUND

    async def run() -> int:
        before = asyncio.ensure_future(memo.token(Generation(1, 0), "secret", slow))
        await slow_started.wait()
        load = Loads()
        await memo.token(Generation(2, 0), "other", load)  # a change happened meanwhile
        release.set()
        await before
        await memo.token(Generation(2, 0), "secret", load)
        return load.calls

    assert asyncio.run(run()) == 2  # the lookup begun before the change was not kept


def test_unknown_tokens_are_not_remembered() -> None:
    memo, calls = Memo(), []

    async def missing(secret: str) -> Found | None:
        calls.append(secret)
        return None

    async def run() -> None:
        for _ in range(2):
            assert await memo.token(Generation(1, 1), "nope", missing) is None

    asyncio.run(run())
    assert len(calls) == 2


def test_a_grant_lives_at_most_grant_seconds_and_is_computed_once_at_a_time() -> None:
    now = [100.0]
    memo = Memo(clock=lambda: now[0])
    computed: list[int] = []

    async def compute() -> dict[str, Any]:
        computed.append(1)
        await asyncio.sleep(0.01)
        return {"mode": "studies", "n": len(computed)}

    async def run() -> None:
        first = await asyncio.gather(
            *(memo.imaging_grant(Generation(0, 3), PRINCIPAL, compute) for _ in range(5))
        )
        assert [g["n"] for g in first] == [1] * 5  # five at once: one computation
        now[0] += GRANT_SECONDS / 2
        assert (await memo.imaging_grant(Generation(0, 3), PRINCIPAL, compute))["n"] == 1
        assert (await memo.imaging_grant(Generation(0, 4), PRINCIPAL, compute))["n"] == 2  # data changed
        now[0] += GRANT_SECONDS
        assert (await memo.imaging_grant(Generation(0, 4), PRINCIPAL, compute))["n"] == 3  # too old

    asyncio.run(run())


def test_a_request_shares_only_a_counter_read_that_begins_after_it() -> None:
    reads: list[asyncio.Event] = []

    async def read(_: Any) -> Generation | None:
        gate = asyncio.Event()
        reads.append(gate)
        await gate.wait()
        return Generation(len(reads), 0)

    memo = Memo(read=read)

    async def run() -> list[Generation | None]:
        engine: Any = None
        first = asyncio.ensure_future(memo.generation(engine))
        while not reads:
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(memo.generation(engine)) for _ in range(3)]  # during read 1
        await asyncio.sleep(0)
        reads[0].set()
        while len(reads) < 2:
            await asyncio.sleep(0)
        reads[1].set()
        return await asyncio.gather(first, *later)

    assert asyncio.run(run()) == [Generation(1, 0)] + [Generation(2, 0)] * 3
    assert len(reads) == 2  # the three that arrived during the first read shared the second


def _study(sid: str, patient: str | None, **more: Any) -> dict[str, Any]:
    subject = {"reference": f"Patient/{patient}"} if patient else {"identifier": {"value": "mrn"}}
    return {"resourceType": "ImagingStudy", "id": sid, "status": "available", "subject": subject, **more}


def test_each_write_moves_the_counts_of_what_it_can_change(settings: EhrSettings) -> None:
    """p1 and p2 are in different shards; the stamp of p1's grant moves only with p1's compartment
    (its Patient, a study naming it, a study moved to it) and with data outside every compartment."""

    async def run() -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
        admin = Admin(settings)
        stamps = []

        async def look() -> None:
            found = await read_generation(admin.engine)
            assert found is not None
            stamps.append((found.grant_stamp("p1"), found.grant_stamp("p2")))

        try:
            await look()
            for resource in (
                {"resourceType": "Patient", "id": "p1"},  # p1
                _study("s2", "p2"),  # p2
                _study("s2", "p2", description="relabeled"),  # p2
                _study("u", None),  # unreconciled: nobody's
                _study("u", "p1"),  # reconciled to p1
                {"resourceType": "Organization", "id": "o1"},  # outside: both
                {"resourceType": "AuditEvent", "id": "a1", "recorded": "2024-01-01"},  # no decision
            ):
                await admin.put_resource(resource)
                await look()
        finally:
            await admin.close()
        return stamps

    stamps = asyncio.run(run())
    moved = [(a[0] != b[0], a[1] != b[1]) for a, b in itertools.pairwise(stamps)]
    assert moved == [
        (True, False),
        (False, True),
        (False, True),
        (False, False),
        (True, False),
        (True, True),
        (False, False),
    ]


def test_a_grant_is_kept_across_writes_for_other_patients() -> None:
    memo, computed = Memo(), []
    shards = [0] * PATIENT_SHARDS

    def at(directory: int, p1: int, others: int, resources: int) -> Generation:
        counts = list(shards)
        counts[ord("1") % PATIENT_SHARDS] = p1
        counts[ord("2") % PATIENT_SHARDS] = others
        return Generation(0, resources, tuple(counts), directory)

    async def compute() -> dict[str, Any]:
        computed.append(time.monotonic())
        return {"studies": len(computed)}

    async def run() -> None:
        await memo.imaging_grant(at(0, 0, 0, 0), PRINCIPAL, compute)
        await memo.imaging_grant(at(0, 0, 5, 5), PRINCIPAL, compute)  # p2's studies written: kept
        assert len(computed) == 1
        await memo.imaging_grant(at(0, 1, 5, 6), PRINCIPAL, compute)  # p1's compartment: computed
        await memo.imaging_grant(at(1, 1, 5, 7), PRINCIPAL, compute)  # outside every compartment
        await memo.imaging_grant(Generation(0, 7), PRINCIPAL, compute)  # counters of 0004 only
        await memo.imaging_grant(Generation(0, 8), PRINCIPAL, compute)  # there any write counts
        assert len(computed) == 5

    asyncio.run(run())


def test_the_compartment_types_of_the_counters_are_the_policys() -> None:
    """Migration 0005 names the compartment types in its triggers; they are the policy engine's."""
    migration = importlib.import_module("imagebridge.ehr.migrations.versions.0005_patient_counters")
    assert set(migration.COMPARTMENT) == {"Patient", *_SUBJECT}


def test_the_clients_counter_moves_with_every_registration_change(settings: EhrSettings) -> None:
    """Migration 0007: a client added, changed or removed moves ``clients`` (tokens do not), and
    the registered origins follow (the enabled clients' http(s) redirect URIs)."""

    async def run() -> list[tuple[int | None, frozenset[str]]]:
        admin = Admin(settings)
        grants = GrantStore(admin.engine)
        seen: list[tuple[int | None, frozenset[str]]] = []

        async def look() -> None:
            found = await read_generation(admin.engine)
            assert found is not None
            seen.append((found.clients, await admin.clients.origins()))

        try:
            await look()
            await admin.add_client(
                "web", "public", scope="patient/*.rs", redirect_uris=["https://App.example:443/cb"]
            )
            await look()
            secret = await grants.issue(Grant("web", "patient/*.rs", time.time() + 60, time.time()))
            await grants.revoke(secret)
            await look()  # tokens are no registrations
            await admin.add_client(
                "native",
                "public",
                scope="patient/*.rs",
                redirect_uris=["com.example:/cb", "http://[::1]:9/cb"],
            )
            await look()
            await admin.clients.set_enabled("web", False)
            await look()
            async with admin.engine.begin() as conn:
                await conn.execute(delete(clients).where(clients.c.client_id == "native"))
            await look()
        finally:
            await admin.close()
        return seen

    seen = asyncio.run(run())
    assert seen == [
        (0, frozenset()),
        (1, {"https://app.example"}),
        (1, {"https://app.example"}),
        (2, {"https://app.example", "http://[::1]:9"}),
        (3, {"http://[::1]:9"}),
        (4, frozenset()),
    ]


def test_origins_are_kept_until_the_clients_counter_moves() -> None:
    memo, reads = Memo(), []

    async def load() -> frozenset[str]:
        reads.append(len(reads))
        return frozenset({f"https://app-{len(reads)}.example"})

    async def run() -> list[frozenset[str]]:
        return [
            await memo.origins(Generation(0, 0, clients=3), load),
            await memo.origins(Generation(9, 9, clients=3), load),  # tokens and resources: kept
            await memo.origins(Generation(9, 9, clients=4), load),
            await memo.origins(Generation(9, 9, clients=3), load),  # read before the change: not filed
            await memo.origins(Generation(9, 9, clients=4), load),
            await memo.origins(Generation(9, 9), load),  # a database before 0007: read every time
            await memo.origins(None, load),
        ]

    answers = asyncio.run(run())
    assert [next(iter(a)).removeprefix("https://app-") for a in answers] == [
        f"{n}.example" for n in (1, 1, 2, 3, 2, 4, 5)
    ]
    assert len(reads) == 5
