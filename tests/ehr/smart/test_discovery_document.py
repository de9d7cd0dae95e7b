"""The discovery documents tell the truth: docs/smart-app-developers.md shows exactly what the running
EHR serves, every advertised endpoint answers, and no OAuth or OpenID default that would be false
here (implicit grants, fragment responses, client secrets, ``request_uri``) is left implied."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from tests.conftest import RunningStack

from imagebridge.common.smart_scopes import parse_scopes

DOC = Path(__file__).parents[3] / "docs" / "smart-app-developers.md"
#: The origins the documentation is written for (as ``imagebridge demo`` starts the services).
DOC_EHR, DOC_IMAGING = "http://127.0.0.1:8080", "http://127.0.0.1:8081"


def documented() -> str:
    """The JSON block that follows the "## Discovery" heading of the app developers' page."""
    text = DOC.read_text()
    found = re.search(r"## Discovery\n.*?```json\n(.*?)\n```", text, re.S)
    assert found, "docs/smart-app-developers.md lost its discovery document"
    return found.group(1)


def as_documented(ehr: RunningStack, served: str) -> str:
    """``served`` with the test stack's origins replaced by those the documentation uses."""
    text = served.replace(ehr.stack.ehr_settings.origin, DOC_EHR)
    text = text.replace(ehr.stack.imaging_settings.origin, DOC_IMAGING)
    return json.dumps(json.loads(text), indent=2)


def test_documentation_shows_the_document_as_served(ehr: RunningStack, fhir_base: str) -> None:
    served = httpx.get(f"{fhir_base}/.well-known/smart-configuration", headers={"Accept": "text/html"})
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    expected = as_documented(ehr, served.text)
    assert documented() == expected, (
        "paste this into docs/smart-app-developers.md under '## Discovery':\n" + expected
    )


def test_every_advertised_endpoint_answers(fhir_base: str) -> None:
    smart: dict[str, Any] = httpx.get(f"{fhir_base}/.well-known/smart-configuration").json()
    assert httpx.get(smart["jwks_uri"]).json()["keys"]
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint", "registration_endpoint"):
        response = httpx.post(smart[name], content=b"")
        assert response.status_code in (400, 401), (name, response.status_code)  # there, refusing nothing
    assert httpx.get(smart["authorization_endpoint"]).status_code == 400  # an error page, no redirect
    for scope in smart["scopes_supported"]:
        parse_scopes(scope)  # every advertised scope is one the server parses
    openid = httpx.get(f"{fhir_base}/.well-known/openid-configuration").json()
    assert openid["issuer"] == smart["issuer"]
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri", "registration_endpoint"):
        assert openid[name] == smart[name]


def test_no_false_defaults(fhir_base: str) -> None:
    for path in (".well-known/smart-configuration", ".well-known/openid-configuration"):
        document = httpx.get(f"{fhir_base}/{path}").json()
        assert "implicit" not in document["grant_types_supported"]
        assert document["response_types_supported"] == ["code"]
        assert document["response_modes_supported"] == ["query"]
        assert document["code_challenge_methods_supported"] == ["S256"]
        for name in ("token_endpoint_auth_methods_supported", "revocation_endpoint_auth_methods_supported"):
            assert set(document[name]) == {"private_key_jwt", "none"}
        assert document["authorization_response_iss_parameter_supported"] is True
    openid = httpx.get(f"{fhir_base}/.well-known/openid-configuration").json()
    assert openid["request_uri_parameter_supported"] is False
    assert openid["id_token_signing_alg_values_supported"] == ["RS256"]
