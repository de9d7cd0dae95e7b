"""Shared fixtures: the two services running as real processes on 127.0.0.1, seeded with the
demo hospital at a small image scale, on SQLite (+ folder) and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagebridge.apps.seed import Seeded, seed_all
from imagebridge.apps.stack import LocalStack
from tests.gate_stack import gate_stack  # noqa: F401 (a session fixture for tests/imaging/gate and tests/security)
from tests.imaging.archive.archive_stack import ArchiveStack, started
from tests.pg import temporary_database
from tests.s3 import MISSING_WEED, S3Server, seaweedfs, weed_binary
from tests.services import missing, require_postgres

#: Images at a quarter of demo size keep the suite fast while staying realistic in structure.
TEST_SCALE = 0.25
#: Every test registers its apps from 127.0.0.1 at the shared EHR: lift the per-address registration
#: limit there (tests/ehr/smart/test_client_configuration.py trips it on an EHR of its own).
SHARED_EHR_ENV = {"IMAGEBRIDGE_EHR_REGISTRATION_RATE_LIMIT": "1000000"}


@dataclass
class RunningStack:
    storage: str
    stack: LocalStack
    seeded: Seeded

    @property
    def fhir_base(self) -> str:
        return self.stack.ehr_settings.fhir_base

    @property
    def dicomweb_base(self) -> str:
        return self.stack.imaging_settings.dicomweb_base


def _running(storage: str, tmp: Path) -> Iterator[RunningStack]:
    with ExitStack() as cleanup:
        urls = {"ehr": "", "imaging": ""}
        if storage == "postgres":
            require_postgres()
            urls = {k: cleanup.enter_context(temporary_database(k)) for k in urls}
        stack = LocalStack(
            tmp,
            ehr_database_url=urls["ehr"],
            imaging_database_url=urls["imaging"],
            extra_ehr_env=SHARED_EHR_ENV,
        )
        stack.provision()
        cleanup.callback(stack.stop)
        stack.start()
        yield RunningStack(storage, stack, seed_all(stack, scale=TEST_SCALE))


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def running(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningStack]:
    """The seeded stack, once per storage backend for the whole session."""
    yield from _running(request.param, tmp_path_factory.mktemp(f"stack-{request.param}"))


@pytest.fixture(scope="session")
def sqlite_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The seeded stack on SQLite only, for tests that do not depend on storage."""
    yield from _running("sqlite", tmp_path_factory.mktemp("stack-sqlite-only"))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) on loopback for the whole session; make a bucket per use."""
    if weed_binary() is None:
        missing(MISSING_WEED)
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def archive_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveStack]:
    """Our own SQLite + folder stack for STOW-RS and archive tests (clients and data of its own)."""
    yield from started(tmp_path_factory.mktemp("archive-stack"))
