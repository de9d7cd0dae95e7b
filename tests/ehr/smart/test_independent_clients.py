"""Independent clients against the running EHR: Authlib's OAuth 2.0 client (authorization code +
PKCE, and client_credentials with private_key_jwt) and Python fhirclient 4.4 (standalone launch,
discovering the endpoints from the CapabilityStatement ``oauth-uris`` extension)."""

from __future__ import annotations

import time

from authlib.common.security import generate_token
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from fhirclient import client as fhir_client
from joserfc.jwk import ECKey
from tests.conftest import RunningStack
from tests.ehr.smart.flow import UserAgent, register_public

SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs"


def _through_ui(ua: UserAgent, url: str, username: str, password: str) -> str:
    page = ua.follow(ua.http.get(url))
    if "/ui/login" in str(page.url):
        page = ua.login(page, username, password)
    if 'name="decision"' in page.text:
        page = ua.consent(page)
    assert page.status_code == 303, page.text
    return page.headers["location"]


def test_authlib_authorization_code_with_pkce(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    with (
        OAuth2Client(
            client_id=app.client_id,
            redirect_uri=app.redirect_uri,
            scope=SCOPE,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        ) as oauth,
        UserAgent(origin) as ua,
    ):
        verifier = generate_token(64)
        url, _ = oauth.create_authorization_url(
            f"{origin}/auth/authorize", code_verifier=verifier, aud=fhir_base
        )
        callback = _through_ui(ua, url, "alice", "alice-demo-2024")
        token = oauth.fetch_token(
            f"{origin}/auth/token", authorization_response=callback, code_verifier=verifier
        )
        assert token["patient"] == "alice"
        assert "refresh_token" in token
        patient = oauth.get(f"{fhir_base}/Patient/alice")
        assert patient.status_code == 200
        assert patient.json()["id"] == "alice"
        refreshed = oauth.refresh_token(f"{origin}/auth/token", refresh_token=token["refresh_token"])
        assert refreshed["access_token"] != token["access_token"]


def test_authlib_client_credentials_private_key_jwt(origin: str, ehr: RunningStack) -> None:
    seeded = ehr.seeded.clients["quality-review"]
    assert seeded.private_jwk is not None
    token_url = f"{origin}/auth/token"
    auth = PrivateKeyJWT(
        token_url,
        claims={"exp": int(time.time()) + 240},
        headers={"kid": seeded.private_jwk["kid"]},
        alg="ES384",
    )
    with OAuth2Client(
        client_id=seeded.client_id,
        client_secret=ECKey.import_key(seeded.private_jwk),
        token_endpoint_auth_method=auth,
    ) as oauth:
        oauth.register_client_auth_method(auth)
        token = oauth.fetch_token(token_url, grant_type="client_credentials", scope="system/ImagingStudy.rs")
    assert token["scope"] == "system/ImagingStudy.rs"
    assert token["expires_in"] <= 300


def test_fhirclient_standalone_launch(origin: str, fhir_base: str) -> None:
    app = register_public(origin)
    settings = {
        "app_id": app.client_id,
        "api_base": fhir_base,
        "redirect_uri": app.redirect_uri,
        "scope": SCOPE,
    }
    smart = fhir_client.FHIRClient(settings=settings)
    url = smart.authorize_url
    assert url is not None
    assert url.startswith(f"{origin}/auth/authorize")
    with UserAgent(origin) as ua:
        callback = _through_ui(ua, url, "bob", "bob-demo-2024")
    smart.handle_callback(callback)
    assert smart.ready
    assert smart.patient_id == "bob"
    assert smart.patient is not None
    assert smart.patient.name[0].family == "Baker"
