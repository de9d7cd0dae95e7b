"""OpenID Connect ID tokens for ``openid fhirUser`` (SMART App Launch 2.2 "Scopes for requesting
identity data"; OIDC Core §2, §3.1.3.7): RS256, signed by the EHR's persisted key whose ``kid`` is
in the published JWKS; ``fhirUser`` is the absolute URL of the user's FHIR resource.
"""

from __future__ import annotations

import time

from imagebridge.common import jose
from imagebridge.ehr.context import EhrContext

ID_TOKEN_LIFETIME = 300


async def id_token(ctx: EhrContext, client_id: str, sub: str, fhir_user: str, nonce: str | None) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ctx.settings.fhir_base,
        "sub": sub,
        "aud": client_id,
        "iat": now,
        "exp": now + ID_TOKEN_LIFETIME,
        "fhirUser": f"{ctx.settings.fhir_base}/{fhir_user}",
    }
    if nonce:
        claims["nonce"] = nonce
    return jose.sign(claims, await ctx.keys.active())
