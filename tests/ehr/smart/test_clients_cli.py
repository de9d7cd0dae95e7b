"""``imagebridge ehr clients add|list|show|disable|enable|imaging-source`` run as a subprocess
against the running EHR's database, then checked over HTTP: the registered backend service gets a
token until disabled; only a Backend Services client becomes an imaging source (exit 2 otherwise,
with the registry's message)."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import httpx
from tests.conftest import RunningStack
from tests.ehr.smart.fixtures import ehr_cli

from imagebridge.apps.smart_client import BackendClient, backend_token
from imagebridge.common import jose


def test_backend_client_added_listed_shown_and_disabled(
    ehr: RunningStack, fhir_base: str, tmp_path: Path
) -> None:
    client_id = f"pipeline-{secrets.token_hex(3)}"
    key = jose.generate_private_jwk("ES384")
    jwks_file = tmp_path / "pipeline.jwks.json"
    jwks_file.write_text(json.dumps(jose.public_jwks(key)))
    added = ehr_cli(
        ehr,
        "clients",
        "add",
        client_id,
        "--kind",
        "backend",
        "--scope",
        "system/Patient.rs",
        "--jwks-file",
        str(jwks_file),
    )
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["scope"] == "system/Patient.rs"
    assert (
        f"{client_id}\tbackend\tenabled\tsystem/Patient.rs"
        in ehr_cli(ehr, "clients", "list").stdout.splitlines()
    )
    shown = json.loads(ehr_cli(ehr, "clients", "show", client_id).stdout)
    assert (shown["kind"], shown["imaging_source"]) == ("backend", False)

    with httpx.Client(timeout=30) as http:
        token = backend_token(fhir_base, BackendClient(client_id, key), "system/Patient.rs", http)
    assert token["scope"] == "system/Patient.rs"

    assert ehr_cli(ehr, "clients", "disable", client_id).returncode == 0
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(f"{fhir_base}/Patient/alice", headers=auth).status_code == 401
    assert json.loads(ehr_cli(ehr, "clients", "show", client_id).stdout)["enabled"] is False


def _add_imaging_source(
    ehr: RunningStack, tmp_path: Path, client_id: str, *more: str
) -> subprocess.CompletedProcess[str]:
    """``clients add <client_id> --imaging-source`` of a backend client with keys, and ``more``."""
    jwks_file = tmp_path / f"{client_id}.jwks.json"
    jwks_file.write_text(json.dumps(jose.public_jwks(jose.generate_private_jwk("ES384"))))
    return ehr_cli(
        ehr,
        "clients",
        "add",
        client_id,
        "--scope",
        "system/ImagingStudy.c",
        "--jwks-file",
        str(jwks_file),
        "--imaging-source",
        *more,
    )


def test_an_imaging_source_is_registered_as_such(ehr: RunningStack, tmp_path: Path) -> None:
    """``--imaging-source``: a modality storing for any PatientID (docs/policy.md "Writing imaging")."""
    client_id = f"modality-{secrets.token_hex(3)}"
    added = _add_imaging_source(ehr, tmp_path, client_id)
    assert added.returncode == 0, added.stderr
    assert json.loads(ehr_cli(ehr, "clients", "show", client_id).stdout)["imaging_source"] is True


def test_an_existing_backend_client_becomes_an_imaging_source_and_back(ehr: RunningStack) -> None:
    """``clients imaging-source [--off]`` (a modality registered before migration 0006) and
    ``clients enable`` after ``disable``; only backend clients, unknown ids exit 1."""
    assert json.loads(ehr_cli(ehr, "clients", "show", "quality-review").stdout)["imaging_source"] is False
    try:
        granted = ehr_cli(ehr, "clients", "imaging-source", "quality-review")
        assert (granted.returncode, granted.stdout) == (0, "quality-review is an imaging source\n")
        assert json.loads(ehr_cli(ehr, "clients", "show", "quality-review").stdout)["imaging_source"] is True
    finally:
        taken = ehr_cli(ehr, "clients", "imaging-source", "quality-review", "--off")
    assert (taken.returncode, taken.stdout) == (0, "quality-review is no longer an imaging source\n")
    assert json.loads(ehr_cli(ehr, "clients", "show", "quality-review").stdout)["imaging_source"] is False

    public = ehr_cli(ehr, "clients", "imaging-source", "demo-app")
    assert public.returncode == 2
    assert "only a backend client" in public.stderr
    assert ehr_cli(ehr, "clients", "imaging-source", "no-such-client").returncode == 1

    client_id = f"toggled-{secrets.token_hex(3)}"
    assert (
        ehr_cli(
            ehr,
            "clients",
            "add",
            client_id,
            "--kind",
            "public",
            "--scope",
            "launch",
            "--redirect-uri",
            "https://app.example/cb",
        ).returncode
        == 0
    )
    assert ehr_cli(ehr, "clients", "disable", client_id).returncode == 0
    assert json.loads(ehr_cli(ehr, "clients", "show", client_id).stdout)["enabled"] is False
    enabled = ehr_cli(ehr, "clients", "enable", client_id)
    assert (enabled.returncode, enabled.stdout) == (0, f"enabled {client_id}\n")
    assert json.loads(ehr_cli(ehr, "clients", "show", client_id).stdout)["enabled"] is True


def test_add_refuses_bad_clients(ehr: RunningStack, tmp_path: Path) -> None:
    no_keys = ehr_cli(
        ehr,
        "clients",
        "add",
        f"keyless-{secrets.token_hex(3)}",
        "--kind",
        "backend",
        "--scope",
        "system/*.rs",
    )
    assert no_keys.returncode == 2
    assert "needs a JWKS" in no_keys.stderr
    taken = ehr_cli(ehr, "clients", "add", "demo-app", "--kind", "public", "--scope", "patient/*.rs")
    assert taken.returncode == 2
    assert "registered already" in taken.stderr
    source = f"source-{secrets.token_hex(3)}"
    public_source = ehr_cli(
        ehr, "clients", "add", source, "--kind", "public", "--scope", "patient/*.rs", "--imaging-source"
    )
    assert public_source.returncode == 2
    assert "only a backend client can be an imaging source" in public_source.stderr
    redirected_source = _add_imaging_source(
        ehr, tmp_path, source, "--redirect-uri", "https://source.example/cb"
    )
    assert redirected_source.returncode == 2  # a backend sent through a browser is no Backend Service
    assert "only a backend client can be an imaging source" in redirected_source.stderr
    assert ehr_cli(ehr, "clients", "show", source).returncode == 1
    assert ehr_cli(ehr, "clients", "show", "no-such-client").returncode == 1
    assert ehr_cli(ehr, "clients", "disable", "no-such-client").returncode == 1
