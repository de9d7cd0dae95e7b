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
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An imaging database migrated to head: a SQLite file, then a throw-away PostgreSQL one."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'imaging.db'}"
        db.upgrade(MIGRATIONS, url)
        yield url
        return
    require_postgres()
    with temporary_database("imaging") as url:
        db.upgrade(MIGRATIONS, url)
        yield url
