"""Database plumbing shared by both services: async engines and Alembic migrations.

SQLite (aiosqlite) is the embedded default; PostgreSQL (asyncpg) is selected by URL. Each service
owns its schema and its Alembic migration folder; ``upgrade`` brings a database to head.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command, op
from alembic.config import Config
from sqlalchemy import Column, event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL with synchronous=FULL: a committed transaction survives power loss (sqlite.org/pragma.html).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for ``url`` with durable SQLite settings or a sized PostgreSQL pool."""
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A pool as large as PostgreSQL's: the default (5) would open and close a connection, with
        # its thread and pragmas, for every request beyond five at once.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=pool_size, max_overflow=pool_size
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(script_location: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def upgrade(script_location: Path, url: str) -> None:
    """Run the service's Alembic migrations to head (synchronously, before serving)."""
    command.upgrade(alembic_config(script_location, url), "head")


def add_missing_column(table: str, column: Column[Any]) -> None:
    """In a migration step: add ``column`` to ``table`` unless it has it already (a database that
    the first migration created from the current metadata)."""
    if column.name not in {found["name"] for found in inspect(op.get_bind()).get_columns(table)}:
        op.add_column(table, column)


def drop_column(table: str, name: str) -> None:
    """In a migration's downgrade: drop a column in place (``ALTER TABLE … DROP COLUMN``, SQLite
    3.35+), keeping the table's triggers: copying the table, as a batch operation does on SQLite,
    drops them (the EHR's change counters of migrations 0003 and 0007 on ``clients``)."""
    op.drop_column(table, name)


def run_migrations_online(url: str, target_metadata: Any) -> None:
    """Body of a service's ``env.py``: run migrations over an async connection."""
    from alembic import context

    async def _run() -> None:
        engine = create_engine(url, pool_size=1)
        async with engine.connect() as connection:
            await connection.run_sync(_do_run, target_metadata)
            await connection.commit()
        await engine.dispose()

    def _do_run(sync_connection: Any, metadata: Any) -> None:
        context.configure(connection=sync_connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()

    asyncio.run(_run())
