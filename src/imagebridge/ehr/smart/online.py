"""How long refresh tokens live: ``offline_access`` and ``online_access`` (SMART App Launch 2.2
"Scopes for requesting a refresh token").

``offline_access`` refresh tokens live 90 days. ``online_access`` ones are "usable for as long as
the end-user remains online": a grant with ``online_access`` (and not ``offline_access``) is bound
to the EHR sign-in session in which the user approved it, and its refresh token ends with that
session (signing out of the EHR, or the session expiring) and after ``online_access_lifetime``
seconds at most. Without either scope no refresh token is issued.
"""

from __future__ import annotations

from imagebridge.ehr.context import EhrContext
from imagebridge.ehr.smart.grants import Grant
from imagebridge.ehr.ui.sessions import SessionStore

OFFLINE_LIFETIME = 90 * 24 * 3600


def bound_session(scope: str, session: str) -> str | None:
    """The sign-in session an authorization of ``scope`` lives with, if it is online_access only."""
    scopes = scope.split()
    return session if "online_access" in scopes and "offline_access" not in scopes else None


async def refresh_expiry(ctx: EhrContext, scope: str, issued_at: float, session: str | None) -> float | None:
    """When a new grant's refresh token expires; None when it gets none (or its session has ended)."""
    scopes = scope.split()
    if "offline_access" in scopes:
        return issued_at + OFFLINE_LIFETIME
    if "online_access" not in scopes or session is None:
        return None
    ends = await SessionStore(ctx.engine).expiry(session)
    return None if ends is None else min(ends, issued_at + ctx.settings.online_access_lifetime)


async def refresh_deadline(ctx: EhrContext, old: Grant) -> float | None:
    """How long the refresh token replacing ``old`` may live; None if the user is no longer online."""
    if old.session is None:
        return old.expires_at
    ends = await SessionStore(ctx.engine).expiry(old.session)
    return None if ends is None else min(ends, old.expires_at)
