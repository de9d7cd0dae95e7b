"""``imagebridge ehr users add|list|show|disable|enable|passwd`` run as a subprocess against the
running EHR's own data directory, then checked over HTTP: the person signs in, launches an app, is
shut out once disabled (sessions ended, tokens revoked) and let back in when enabled; a new
password ends their sessions and only it signs in."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import ehr_cli
from tests.ehr.smart.flow import UserAgent, refresh, register_public, signed_in, standalone

from imagebridge.common import db
from imagebridge.ehr.tables import users

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs"


def users_cli(
    ehr: RunningStack, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return ehr_cli(ehr, "users", *args, stdin=stdin, **env)


def add_user(ehr: RunningStack, username: str, fhir_user: str, *extra: str) -> tuple[str, dict[str, object]]:
    """``users add`` with a fresh password on stdin: (the password, the user as printed)."""
    password = secrets.token_urlsafe(16)
    added = users_cli(
        ehr, "add", username, "--fhir-user", fhir_user, *extra, "--password-stdin", stdin=password + "\n"
    )
    assert added.returncode == 0, added.stderr
    assert password not in added.stdout + added.stderr
    printed: dict[str, object] = json.loads(added.stdout)
    return password, printed


def password_hash(ehr: RunningStack, username: str) -> str:
    async def read() -> str:
        engine = db.create_engine(ehr.stack.ehr_settings.resolved_database_url)
        try:
            async with engine.connect() as conn:
                row = (
                    await conn.execute(select(users.c.password_hash).where(users.c.username == username))
                ).one()
            return str(row.password_hash)
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.fixture
def username() -> str:
    return f"carol-{secrets.token_hex(3)}"


def test_added_user_signs_in_and_launches(
    ehr: RunningStack, origin: str, fhir_base: str, username: str
) -> None:
    password, printed = add_user(ehr, username, "Patient/bob", "--name", "Carol C")
    assert printed == {
        "username": username,
        "display_name": "Carol C",
        "fhirUser": "Patient/bob",
        "roles": ["patient"],
        "enabled": True,
    }
    stored = password_hash(ehr, username)
    assert stored.startswith("$argon2id$")
    assert password not in stored

    listed = users_cli(ehr, "list")
    assert f"{username}\tPatient/bob\tpatient\tenabled" in listed.stdout.splitlines()
    shown = users_cli(ehr, "show", username)
    assert json.loads(shown.stdout)["fhirUser"] == "Patient/bob"
    assert "argon2" not in shown.stdout

    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(ua, app, fhir_base, username, password, SCOPE)
    assert done.params["code"]


def test_password_from_environment_variable(ehr: RunningStack, origin: str, username: str) -> None:
    password = secrets.token_urlsafe(16)
    added = users_cli(
        ehr, "add", username, "--fhir-user", "Practitioner/dr-chen", "--password-env", "PW", PW=password
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["roles"] == ["clinician"]
    with signed_in(origin, username, password) as ua:
        assert ua.http.get("/ui/patients").status_code == 200  # the clinician role opens charts


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["--fhir-user", "Patient/no-such-patient"], "long-enough-password", "no Patient/no-such-patient"),
        (["--fhir-user", "Organization/general"], "long-enough-password", "fhirUser must be"),
        (
            ["--fhir-user", "Patient/bob", "--role", "clinician"],
            "long-enough-password",
            "clinician role needs",
        ),
        (["--fhir-user", "Patient/bob"], "short", "at least 12"),
        (["--fhir-user", "Patient/bob"], None, "no terminal"),
        (["--fhir-user", "Patient/bob", "--password-env", "UNSET_PW_VARIABLE"], None, "is not set"),
    ],
    ids=[
        "unknown-resource",
        "wrong-kind",
        "role-mismatch",
        "short-password",
        "no-password-source",
        "unset-env",
    ],
)
def test_add_refuses_bad_users(
    ehr: RunningStack, username: str, args: list[str], stdin: str | None, message: str
) -> None:
    stdin_flag = ["--password-stdin"] if stdin is not None else []
    result = users_cli(ehr, "add", username, *args, *stdin_flag, stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert users_cli(ehr, "show", username).returncode == 1  # nothing was written


def test_username_taken(ehr: RunningStack) -> None:
    result = users_cli(
        ehr, "add", "alice", "--fhir-user", "Patient/alice", "--password-stdin", stdin="x" * 20
    )
    assert result.returncode == 2
    assert "exists already" in result.stderr
    with signed_in(ehr.stack.ehr_settings.origin, "alice", "alice-demo-2024"):
        pass  # alice's password is unchanged


def test_disable_ends_sessions_and_tokens(
    ehr: RunningStack, origin: str, fhir_base: str, username: str
) -> None:
    password, _ = add_user(ehr, username, "Patient/bob")
    app = register_public(origin)
    with UserAgent(origin) as ua:
        done = standalone(ua, app, fhir_base, username, password, SCOPE)
        tokens = httpx.post(
            f"{origin}/auth/token",
            data={
                "grant_type": "authorization_code",
                "code": done.params["code"],
                "redirect_uri": app.redirect_uri,
                "client_id": app.client_id,
                "code_verifier": done.verifier,
            },
        ).json()
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        assert httpx.get(f"{fhir_base}/Patient/bob", headers=auth).status_code == 200

        disabled = users_cli(ehr, "disable", username)
        assert disabled.returncode == 0, disabled.stderr
        assert "1 sessions ended" in disabled.stdout

        assert ua.http.get("/ui/apps").status_code == 303  # the session is gone: back to the login page
        assert httpx.get(f"{fhir_base}/Patient/bob", headers=auth).status_code == 401
        assert refresh(origin, app, tokens["refresh_token"]).status_code == 400
        login = ua.http.get("/ui/login")
        assert ua.login(login, username, password).status_code == 401
    assert json.loads(users_cli(ehr, "show", username).stdout)["enabled"] is False
    assert users_cli(ehr, "disable", "no-such-user").returncode == 1


def test_passwd_replaces_the_password_and_ends_sessions(
    ehr: RunningStack, origin: str, username: str, tmp_path: Path
) -> None:
    old, _ = add_user(ehr, username, "Patient/bob")
    old_hash = password_hash(ehr, username)
    new = secrets.token_urlsafe(16)
    (tmp_path / "pw").write_text(new + "\n")
    with signed_in(origin, username, old) as ua:
        changed = users_cli(ehr, "passwd", username, "--password-file", str(tmp_path / "pw"))
        assert changed.returncode == 0, changed.stderr
        assert "1 sessions ended" in changed.stdout
        assert new not in changed.stdout + changed.stderr
        assert ua.http.get("/ui/apps").status_code == 303  # signed out: back to the login page
        assert ua.login(ua.http.get("/ui/login"), username, old).status_code == 401
    stored = password_hash(ehr, username)
    assert stored.startswith("$argon2id$")
    assert stored != old_hash
    assert new not in stored
    with signed_in(origin, username, new):
        pass
    newer = secrets.token_urlsafe(16)
    assert users_cli(ehr, "passwd", username, "--password-stdin", stdin=newer + "\n").returncode == 0
    with signed_in(origin, username, newer):
        pass


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["no-such-user", "--password-stdin"], "long-enough-password", 1, "no user 'no-such-user'"),
        (["{user}", "--password-stdin"], "short", 2, "at least 12"),
        (["{user}"], None, 2, "no terminal"),
        (["{user}", "--password-file", "/nonexistent/pw"], None, 2, "cannot read /nonexistent/pw"),
    ],
    ids=["unknown-user", "short-password", "no-password-source", "unreadable-file"],
)
def test_passwd_refusals_leave_the_password(
    ehr: RunningStack, origin: str, username: str, args: list[str], stdin: str | None, code: int, message: str
) -> None:
    password, _ = add_user(ehr, username, "Patient/bob")
    result = users_cli(ehr, "passwd", *(a.format(user=username) for a in args), stdin=stdin)
    assert result.returncode == code
    assert message in result.stderr
    with signed_in(origin, username, password):
        pass


def test_enable_lets_a_disabled_user_sign_in_again(ehr: RunningStack, origin: str, username: str) -> None:
    password, _ = add_user(ehr, username, "Patient/bob")
    assert users_cli(ehr, "disable", username).returncode == 0
    with UserAgent(origin) as ua:
        assert ua.login(ua.http.get("/ui/login"), username, password).status_code == 401
    enabled = users_cli(ehr, "enable", username)
    assert enabled.returncode == 0, enabled.stderr
    assert f"{username}\tPatient/bob\tpatient\tenabled" in users_cli(ehr, "list").stdout.splitlines()
    with signed_in(origin, username, password):
        pass
    assert users_cli(ehr, "enable", "no-such-user").returncode == 1
