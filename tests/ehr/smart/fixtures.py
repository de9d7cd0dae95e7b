"""Session fixtures for the authorization-server and UI tests: the shared seeded stack's EHR."""

from __future__ import annotations

import pytest
from tests.conftest import RunningStack


@pytest.fixture(scope="session")
def ehr(sqlite_stack: RunningStack) -> RunningStack:
    return sqlite_stack


@pytest.fixture(scope="session")
def origin(ehr: RunningStack) -> str:
    return ehr.stack.ehr_settings.origin


@pytest.fixture(scope="session")
def fhir_base(ehr: RunningStack) -> str:
    return ehr.fhir_base
