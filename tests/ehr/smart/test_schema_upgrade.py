"""EHR migrations bring a database from before them up to date: 0002 one created before users had
roles, clients had registration access tokens and tokens had online_access sessions, keeping its
users able to sign in in the roles they had (Practitioners stay clinicians); 0006 one whose
clients had no ``imaging_source``; 0007 one without the ``clients`` counter. Downgrades keep the
triggers of the change counters."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from sqlalchemy import Connection, inspect, text, update

from imagebridge.common import db
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.app import MIGRATIONS
from imagebridge.ehr.smart.clients import Client, ClientRegistry
from imagebridge.ehr.smart.memo import Generation, read_generation
from imagebridge.ehr.smart.users import UserStore
from imagebridge.ehr.tables import clients, metadata

ADDED = (("users", "roles"), ("users", "enabled"), ("clients", "registration_token"), ("tokens", "session"))


def _schema(conn: Connection) -> tuple[set[str], dict[str, set[str]]]:
    """(index names of ``tokens``, column names of each table 0002 changes)."""
    found = inspect(conn)
    indexes = {str(index["name"]) for index in found.get_indexes("tokens")}
    return indexes, {table: {c["name"] for c in found.get_columns(table)} for table, _ in ADDED}


def left_by(url: str, revision: str, *statements: str) -> None:
    """A database as ``revision`` left it: today's schema taken back by ``statements``, stamped."""

    async def run() -> None:
        engine = db.create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run())
    command.stamp(db.alembic_config(MIGRATIONS, url), revision)


def test_0002_upgrades_a_database_from_before_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ehr.sqlite3'}"

    left_by(
        url,
        "0001",
        "DROP INDEX ix_tokens_session",
        *(f"ALTER TABLE {table} DROP COLUMN {column}" for table, column in ADDED),
        "INSERT INTO users (username, password_hash, fhir_user, display_name, created_at) VALUES"
        " ('chen', 'x', 'Practitioner/dr-chen', 'Dr. Chen', 0),"
        " ('elena', 'x', 'RelatedPerson/elena', 'Elena', 0),"
        " ('alice', 'x', 'Patient/alice', 'Alice', 0)",
    )
    db.upgrade(MIGRATIONS, url)

    async def read() -> tuple[dict[str, tuple[tuple[str, ...], bool]], set[str]]:
        engine = db.create_engine(url)
        try:
            users = {u.username: (u.roles, u.enabled) for u in await UserStore(engine).all()}
            async with engine.connect() as conn:
                indexes, columns = await conn.run_sync(_schema)
            assert all(column in columns[table] for table, column in ADDED)
            return users, indexes
        finally:
            await engine.dispose()

    users, indexes = asyncio.run(read())
    assert users == {
        "chen": (("clinician",), True),
        "elena": (("proxy",), True),
        "alice": (("patient",), True),
    }
    assert "ix_tokens_session" in indexes
    db.upgrade(MIGRATIONS, url)  # already at head: nothing to do, nothing fails


def test_0006_registers_no_existing_client_as_an_imaging_source(tmp_path: Path) -> None:
    """A client registered before 0006 is not an imaging source afterwards (docs/policy.md)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ehr.sqlite3'}"

    left_by(
        url,
        "0005",
        "ALTER TABLE clients DROP COLUMN imaging_source",
        "INSERT INTO clients (client_id, kind, name, scope, redirect_uris, zero_click, enabled, created_at)"
        " VALUES ('modality', 'backend', 'modality', 'system/ImagingStudy.c', '[]', 0, 1, 0)",
    )
    db.upgrade(MIGRATIONS, url)

    async def read() -> bool | None:
        engine = db.create_engine(url)
        try:
            client = await ClientRegistry(engine).get("modality")
            return None if client is None else client.imaging_source
        finally:
            await engine.dispose()

    assert asyncio.run(read()) is False


def test_0007_counts_registrations_of_a_database_from_before_it(tmp_path: Path) -> None:
    """After 0007 a client registered in a database from before it moves the ``clients`` counter
    (ehr/smart/memo.py: each worker's registered origins are read again)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'ehr.sqlite3'}"
    left_by(url, "0006", "INSERT INTO generations (name, value) VALUES ('credentials', 0), ('resources', 0)")
    db.upgrade(MIGRATIONS, url)

    async def count() -> tuple[int | None, int | None]:
        engine = db.create_engine(url)
        try:
            before = await read_generation(engine)
            await ClientRegistry(engine).add(Client("web", "public", "web", "patient/*.rs"))
            after = await read_generation(engine)
        finally:
            await engine.dispose()
        assert before is not None
        assert after is not None
        return before.clients, after.clients

    assert asyncio.run(count()) == (0, 1)


def test_downgrades_keep_the_registration_triggers(ehr_settings: EhrSettings) -> None:
    """Taken back to 0005 (0007's and 0006's downgrades), a client disabled still moves the
    ``credentials`` counter of 0003 (ehr/smart/memo.py: no worker keeps verifying its assertions);
    upgraded again, a registration moves the ``clients`` counter too."""
    url = ehr_settings.resolved_database_url

    async def disable() -> tuple[Generation, Generation]:
        engine = db.create_engine(url)
        try:
            before = await read_generation(engine)
            async with engine.begin() as conn:
                await conn.execute(update(clients).where(clients.c.client_id == "web").values(enabled=False))
            after = await read_generation(engine)
        finally:
            await engine.dispose()
        assert before is not None
        assert after is not None
        return before, after

    asyncio.run(_add(url, Client("web", "public", "web", "patient/*.rs")))
    command.downgrade(db.alembic_config(MIGRATIONS, url), "0005")
    before, after = asyncio.run(disable())
    assert after.credentials == before.credentials + 1
    db.upgrade(MIGRATIONS, url)
    asyncio.run(_add(url, Client("web2", "public", "web2", "patient/*.rs")))
    before, after = asyncio.run(disable())
    assert (after.credentials, after.clients) == (before.credentials + 1, (before.clients or 0) + 1)


async def _add(url: str, client: Client) -> None:
    engine = db.create_engine(url)
    try:
        await ClientRegistry(engine).add(client)
    finally:
        await engine.dispose()
