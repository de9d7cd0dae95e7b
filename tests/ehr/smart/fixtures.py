"""Session fixtures for the authorization-server and UI tests: the shared seeded stack's EHR, and
EHR processes of their own for tests that need other settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from tests.conftest import RunningStack
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.apps.seed import seed_ehr
from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.apps.stack import LocalStack, settings_env, start_service
from imagebridge.common import jose
from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.app import migrate


@pytest.fixture(scope="session")
def ehr(sqlite_stack: RunningStack) -> RunningStack:
    return sqlite_stack


@pytest.fixture(scope="session")
def origin(ehr: RunningStack) -> str:
    return ehr.stack.ehr_settings.origin


@pytest.fixture(scope="session")
def fhir_base(ehr: RunningStack) -> str:
    return ehr.fhir_base


@pytest.fixture(scope="session")
def introspector(ehr: RunningStack) -> str:
    """The imaging system's own backend token with the introspection scope (RFC 7662 caller)."""
    settings = ehr.stack.imaging_settings
    client = BackendClient(settings.client_id, jose.load_or_create_private_jwk(settings.private_key_file))
    with httpx.Client() as http:
        token: str = backend_token(ehr.fhir_base, client, "introspection", http)["access_token"]
    return token


@pytest.fixture(params=["sqlite", "postgres"])
def ehr_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EhrSettings]:
    """Settings of an EHR database of its own, migrated: a SQLite file, then a PostgreSQL one."""
    if request.param == "sqlite":
        found = EhrSettings(data_dir=tmp_path)
        migrate(found)
        yield found
        return
    require_postgres()
    with temporary_database("ehr") as url:
        found = EhrSettings(data_dir=tmp_path, database_url=url)
        migrate(found)
        yield found


@contextmanager
def own_ehr(data_dir: Path, **settings: object) -> Iterator[LocalStack]:
    """An EHR process of its own (no imaging system) with the demo hospital and ``settings``."""
    stack = LocalStack(data_dir, extra_ehr_env=settings_env("EHR", settings))
    stack.provision()
    seed_ehr(stack)
    stack.ehr = start_service("ehr", stack.ehr_env(), stack.ehr_settings.origin, data_dir / "ehr.log")
    try:
        yield stack
    finally:
        stack.stop()


def ehr_cli(
    ehr: RunningStack, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``imagebridge ehr <args>`` against the running EHR's own database, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "imagebridge", "ehr", *args],
        env={**os.environ, **ehr.stack.ehr_env(), **env},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
