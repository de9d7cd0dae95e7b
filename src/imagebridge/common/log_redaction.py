"""Keep credentials that arrive in URLs out of access logs (RFC 6750 §5.3; security.md RS-02, AU-03).

Tokens are refused in query strings, but a client may still send one there; the refused request
is logged by the HTTP server. This filter rewrites the logged request target of ``uvicorn.access``
records: the values of credential-like query parameters, and capabilities in paths, become
``[redacted]``.
"""

from __future__ import annotations

import logging
import re

#: Query parameters whose values are credentials (OAuth 2.0 and SMART names).
SECRET_PARAMS = (
    "access_token",
    "refresh_token",
    "id_token",
    "code",
    "code_verifier",
    "client_assertion",
    "token",
)
_PATTERN = re.compile(r"(?i)([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s]*")


#: Capability URLs (``…/cap/{capability}/…``) are credentials in the path.
_CAPABILITY = re.compile(r"/cap/[^/?#\s]+")


def redact_target(target: str) -> str:
    """``target`` with credential-like query values and capability path segments replaced."""
    return _CAPABILITY.sub("/cap/[redacted]", _PATTERN.sub(r"\1[redacted]", target))


class RedactCredentials(logging.Filter):
    """Rewrites string arguments of a log record (uvicorn passes the request target as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_target(a) if isinstance(a, str) else a for a in record.args)
        return True


def install(logger_name: str = "uvicorn.access") -> None:
    """Add the filter to ``logger_name`` once."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactCredentials) for f in logger.filters):
        logger.addFilter(RedactCredentials())
