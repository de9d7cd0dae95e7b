"""Discovery documents: SMART configuration, OpenID configuration and the JWK Set.

SMART App Launch 2.2 §"Conformance" (``/.well-known/smart-configuration``, JSON regardless of
``Accept``, absolute URLs); Argonaut SMART Imaging Access (``associated_endpoints`` with
``smart-imaging-access`` and the mode capabilities); OpenID Connect Discovery 1.0 §3. Any origin
may read them (``Access-Control-Allow-Origin: *``, ehr/cors.py): they are public documents.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import JSONResponse
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart.introspection import INTROSPECTION_SCOPE

IMAGING_CAPABILITIES = [
    "smart-imaging-access",
    "http://fhir.org/argonaut/smart-imaging/capabilities/app-launch",
    "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services",
]

SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/ImagingStudy.rs",
    "patient/Patient.rs",
    "patient/DiagnosticReport.rs",
    "user/*.rs",
    "user/ImagingStudy.rs",
    "system/*.rs",
    "system/ImagingStudy.rs",
    INTROSPECTION_SCOPE,
]

#: Members of both discovery documents. Each one is said even where RFC 8414 or OpenID Connect
#: Discovery have a default, because their defaults (``implicit`` grants, ``fragment`` responses,
#: ``client_secret_basic``, ``request_uri`` support) would be false here.
OAUTH_METADATA: dict[str, Any] = {
    "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
    "response_types_supported": ["code"],
    "response_modes_supported": ["query"],
    "code_challenge_methods_supported": ["S256"],
    "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
    "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
    "authorization_response_iss_parameter_supported": True,
}


def smart_configuration_document(ctx: EhrContext) -> dict[str, Any]:
    origin = ctx.settings.origin
    return {
        "issuer": ctx.settings.fhir_base,
        "jwks_uri": f"{origin}/.well-known/jwks.json",
        "authorization_endpoint": f"{origin}/auth/authorize",
        "token_endpoint": ctx.token_endpoint,
        "introspection_endpoint": f"{origin}/auth/introspect",
        "revocation_endpoint": f"{origin}/auth/revoke",
        "registration_endpoint": f"{origin}/auth/register",
        **OAUTH_METADATA,
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-banner",
            "context-style",
            "context-ehr-patient",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
        ],
        "associated_endpoints": [
            {"url": base, "capabilities": IMAGING_CAPABILITIES} for base in ctx.settings.imaging_bases
        ],
    }


async def smart_configuration(request: Request) -> Response:
    return JSONResponse(smart_configuration_document(request.app.state.ctx))


async def openid_configuration(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    smart = smart_configuration_document(ctx)
    return JSONResponse(
        {
            "issuer": smart["issuer"],
            "authorization_endpoint": smart["authorization_endpoint"],
            "token_endpoint": smart["token_endpoint"],
            "jwks_uri": smart["jwks_uri"],
            "registration_endpoint": smart["registration_endpoint"],
            "revocation_endpoint": smart["revocation_endpoint"],
            **OAUTH_METADATA,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "request_uri_parameter_supported": False,
        }
    )


async def jwks(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    return JSONResponse(await ctx.keys.public_jwks(), headers={"Cache-Control": "max-age=300"})
