"""FHIR date, dateTime and instant values as UTC instant ranges (FHIR R4 §2.24 "Date/Time").

A partial date such as ``2024-03`` stands for the whole month; searches compare ranges
(FHIR R4 §3.1.1.4.3, the ``eq``/``gt``/``lt``/``ge``/``le`` prefixes).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

_DATE = re.compile(
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})"
    r"(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class InvalidDate(ValueError):
    """A value is not a FHIR date, dateTime or instant."""


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def date_range(value: str) -> tuple[str, str]:
    """The inclusive ``(low, high)`` UTC instants covered by a FHIR date/dateTime/instant."""
    match = _DATE.match(value.strip())
    if not match:
        raise InvalidDate(f"not a FHIR date/dateTime: {value!r}")
    g = match.groupdict()
    year = int(g["y"])
    try:
        if g["m"] is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return _fmt(low), _fmt(datetime(year + 1, 1, 1, tzinfo=UTC) - timedelta(milliseconds=1))
        month = int(g["m"])
        if g["d"] is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            last = calendar.monthrange(year, month)[1]
            return _fmt(low), _fmt(low + timedelta(days=last) - timedelta(milliseconds=1))
        day = int(g["d"])
        if g["H"] is None:
            low = datetime(year, month, day, tzinfo=UTC)
            return _fmt(low), _fmt(low + timedelta(days=1) - timedelta(milliseconds=1))
        tz = UTC if g["tz"] in (None, "Z") else datetime.strptime(g["tz"], "%z").tzinfo
        second = int(g["S"] or 0)
        micro = int(float(g["f"]) * 1_000_000) if g["f"] else 0
        low = datetime(year, month, day, int(g["H"]), int(g["M"]), second, micro, tzinfo=tz)
    except ValueError as exc:
        raise InvalidDate(f"not a valid date: {value!r} ({exc})") from exc
    span = timedelta(seconds=1) if g["S"] is None or not g["f"] else timedelta(milliseconds=1)
    if g["S"] is None:
        span = timedelta(minutes=1)
    return _fmt(low), _fmt(low + span - timedelta(milliseconds=1))


def now_instant() -> str:
    """The current time as a FHIR instant (UTC, milliseconds)."""
    return _fmt(datetime.now(UTC))
