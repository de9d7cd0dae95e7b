"""Fixtures shared by the imaging tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.common import db
from imagebridge.imaging.app import MIGRATIONS


@pytest.fixture(params=["sqlite", "postgres"])
def blank_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty imaging database: a SQLite file, then a throw-away PostgreSQL one."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'imaging.db'}"
        return
    require_postgres()
    with temporary_database("imaging") as url:
        yield url


@pytest.fixture
def database_url(blank_database_url: str) -> str:
    """:func:`blank_database_url` migrated to head."""
    db.upgrade(MIGRATIONS, blank_database_url)
    return blank_database_url
