"""Which external services the tests can use, and what to do when one is missing.

On a developer's laptop a missing service skips its tests with a reason; under ``CI=true`` a
missing service fails them (CONTRIBUTING.md "Tests").
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)


def _listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


def missing(reason: str) -> None:
    """Skip (laptop) or fail (CI) because ``reason``."""
    if IN_CI:
        pytest.fail(f"required service missing under CI=true: {reason}")
    pytest.skip(reason)


def require_postgres() -> None:
    if not _listening(POSTGRES):
        missing("PostgreSQL is not listening on 127.0.0.1:5432")


def require_redis() -> None:
    if not _listening(REDIS):
        missing("Redis is not listening on 127.0.0.1:6379")


def require_executable(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found (Debian package {package}; `make test` installs it as root)")
        raise AssertionError("unreachable")
    return path
