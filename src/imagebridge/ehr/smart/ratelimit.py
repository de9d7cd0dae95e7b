"""Rate limiting of the login form, the token endpoint and dynamic registration (RFC 6749 §10.10,
RFC 6819 §4.4.1.3 online guessing of codes, §4.5.3, §4.6.3; RFC 7591 §5 registration flooding).

In memory, per process (a deployment with N workers allows N times the budget; documented in
docs/smart-app-developers.md). After ``limit`` counted attempts for one key within ``window``
seconds further attempts get 429 with ``Retry-After`` until the oldest one ages out. What counts:
failures at login (key: the username) and at the token endpoint (key: the client_id); every
registration request (key: the client's IP address, as the socket reports it: forwarding headers
are never trusted).
"""

from __future__ import annotations

from starlette.responses import Response

from imagebridge.common.responses import JSONResponse
from imagebridge.common.sliding_window import Limiter
from imagebridge.ehr.smart.oauth_errors import NO_STORE


def too_many(wait: int) -> Response:
    """429 with ``Retry-After`` for an OAuth endpoint (never cached)."""
    return JSONResponse(
        {"error": "slow_down", "error_description": "too many requests; try again later"},
        status_code=429,
        headers={**NO_STORE, "Retry-After": str(wait)},
    )


#: 10 wrong passwords per username per 5 minutes.
LOGIN = Limiter(limit=10, window=300)
#: 30 rejected token requests per client per minute.
TOKEN = Limiter(limit=30, window=60)
#: Refused token requests (every grant type, backend assertions and jti replays included) that
#: raise a Security Alert AuditEvent (security.md AU-02), per claimed client and, apart (a flood of
#: made-up client ids must not wipe an address's count), per address.
ALERT_BY_CLIENT = Limiter(limit=10, window=300)
ALERT_BY_ADDRESS = Limiter(limit=10, window=300)
