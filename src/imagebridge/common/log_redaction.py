"""Keep credentials and PHI that arrive in URLs out of access logs (RFC 6750 §5.3; security.md
RS-02, AU-03, AU-04).

Tokens are refused in query strings, but a client may still send one there, and search queries
carry PHI by design (``PatientName=``, ``PatientID=``, FHIR ``name=``, ``birthdate=``,
``identifier=``). The HTTP server logs every request target; this filter rewrites the target of
``uvicorn.access`` records: every query parameter value, and capabilities in paths, become
``[redacted]`` (parameter names stay, for diagnosis). Both services' uvicorn logging is configured
with it (:data:`LOGGING_CONFIG`), in every worker process.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import uvicorn.config

_QUERY_VALUE = re.compile(r"([?&][^=&#\s]*=)[^&#\s]*")

#: Capability URLs (``…/cap/{capability}/…``) are credentials in the path.
_CAPABILITY = re.compile(r"/cap/[^/?#\s]+")


def redact_target(target: str) -> str:
    """``target`` with every query value and capability path segment replaced."""
    return _CAPABILITY.sub("/cap/[redacted]", _QUERY_VALUE.sub(r"\1[redacted]", target))


class RedactTargets(logging.Filter):
    """Rewrites string arguments of a log record (uvicorn passes the request target as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_target(a) if isinstance(a, str) else a for a in record.args)
        return True


def _logging_config() -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_targets"] = {"()": f"{__name__}.RedactTargets"}
    config["handlers"]["access"]["filters"] = ["redact_targets"]
    return config


#: uvicorn's default logging, its access log passed through :class:`RedactTargets`.
LOGGING_CONFIG = _logging_config()
