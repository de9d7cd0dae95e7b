"""Token revocation (RFC 7009; SMART App Launch 2.2 ``revocation_endpoint``).

The client authenticates as at the token endpoint. Revoking a refresh token revokes its whole
family (every access and refresh token of that authorization, RFC 7009 §2.1); revoking an access
token revokes that token. An unknown token is answered 200 (§2.2); another client's token is
refused (§2.1, ``unauthorized_client``) and left alone.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.tokens import token_id
from imagebridge.ehr import audit
from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart.forms import read_form
from imagebridge.ehr.smart.oauth_errors import NO_STORE, OAuthError
from imagebridge.ehr.smart.token import authenticate_app, authenticate_client


async def revocation_endpoint(request: Request) -> Response:
    ctx: EhrContext = request.app.state.ctx
    try:
        form = await read_form(request)
        if "client_assertion" in form:
            client = await authenticate_client(ctx, form)
        else:
            client = await authenticate_app(ctx, form)
        token = form.get("token", "")
        hint = form.get("token_type_hint")
        kinds = ["refresh", "access"] if hint == "refresh_token" else ["access", "refresh"]
        for kind in kinds:
            grant = await ctx.grants.lookup(token, kind=kind) if token else None
            if grant is None:
                continue
            if grant.client_id != client.client_id:
                raise OAuthError("unauthorized_client", "this token was issued to another client")
            if kind == "refresh" and grant.family:
                await ctx.grants.revoke_family(grant.family)
            else:
                await ctx.grants.revoke(token)
            audit.authorization_event(
                ctx,
                audit.TOKEN_REVOKED,
                request,
                client.client_id,
                user=grant.fhir_user,
                patient=grant.patient,
                why=f"{kind} token revoked{' with its family' if kind == 'refresh' and grant.family else ''}",
                grant_id=token_id(token),
            )
            break
    except OAuthError as exc:
        return exc.response()
    return Response(status_code=200, headers=NO_STORE)
