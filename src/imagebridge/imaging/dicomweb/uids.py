"""DICOM Unique Identifiers: PS3.5 §9.1 syntax and PS3.18 §8.3.4.1 UID list matching.

A UID is a sequence of numeric components separated by ``.``: each component is ``0`` or a
number without a leading zero, no component is empty, and the whole value is at most 64
characters (PS3.5 §9.1, Table 6.2-1 VR UI). Only the ASCII digits ``0``-``9`` count as digits.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
"""PS3.5 §9.1: "The total length of a UID shall not exceed 64 characters"."""

# Anchored, and every repetition starts with a literal ".", so matching is linear (no backtracking).
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_LIST_SEPARATORS = re.compile(r"[,\\]")
_SHOWN = 80  # longest excerpt of a rejected value quoted back in an error message


class InvalidUID(ValueError):
    """A value that is not a PS3.5 §9.1 UID (or a UID list containing one)."""


def is_valid_uid(s: str) -> bool:
    """Return True when ``s`` is a syntactically valid UID (PS3.5 §9.1)."""
    return len(s) <= MAX_UID_LENGTH and _UID.fullmatch(s) is not None


def validate_uid(s: str) -> str:
    """Return ``s`` unchanged if it is a valid UID, else raise :class:`InvalidUID` saying why."""
    if is_valid_uid(s):
        return s
    raise InvalidUID(f"invalid UID {_excerpt(s)}: {_reason(s)}")


def parse_uid_list(value: str) -> list[str]:
    """Split a PS3.18 §8.3.4.1 UID list (``,`` or ``\\`` separated) into UIDs.

    Every item must be a valid UID; duplicates are dropped, first occurrence order is kept.
    Raises :class:`InvalidUID` naming the first offending item.
    """
    uids: dict[str, None] = {}
    for position, item in enumerate(_LIST_SEPARATORS.split(value), start=1):
        if not is_valid_uid(item):
            raise InvalidUID(f"invalid UID list: item {position} {_excerpt(item)}: {_reason(item)}")
        uids[item] = None
    return list(uids)


def _excerpt(s: str) -> str:
    return repr(s if len(s) <= _SHOWN else s[:_SHOWN] + "…")


def _reason(s: str) -> str:
    """Explain why ``s`` is not a UID (only called for invalid values)."""
    if not s:
        return "empty value"
    if len(s) > MAX_UID_LENGTH:
        return f"{len(s)} characters, more than {MAX_UID_LENGTH}"
    bad = next((c for c in s if c != "." and c not in "0123456789"), None)
    if bad is not None:
        return f"character {bad!r} is not a digit or '.'"
    component = next(c for c in s.split(".") if not c or (len(c) > 1 and c[0] == "0"))
    return f"component {component!r} has a leading zero" if component else "empty component"
