"""QIDO-RS attribute matching as SQL (PS3.18 §8.3.4.1; PS3.4 §C.2.2.2).

Each query value becomes one SQL condition, evaluated by the database over indexed columns:

- Universal matching (§C.2.2.2.3): an empty value, or a lone ``*``, matches everything.
- Single value matching (§C.2.2.2.1): exact and case-sensitive; IS values compare as integers.
- List of UID matching (§C.2.2.2.2): ``uid1,uid2`` or ``uid1\\uid2`` for UI attributes.
- Wild card matching (§C.2.2.2.4): ``*`` (any run) and ``?`` (one character), case-sensitive;
  not for DA, TM, DT, UI or IS values (400).
- Range matching (§C.2.2.2.5): ``a-b``, ``-b``, ``a-`` for DA and TM.
- Fuzzy person-name matching (``fuzzymatching=true``, PS3.18 §8.3.4.4): see
  :func:`fold_person_name` and :func:`fuzzy_person_name`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from sqlalchemy import ColumnElement, and_, literal, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Boolean

from imagebridge.imaging.dicomweb.errors import DicomwebError
from imagebridge.imaging.dicomweb.uids import InvalidUID, parse_uid_list

_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
_WORDS = re.compile(r"[\s^=,]+")
#: Latin letters that Unicode does not decompose into a base letter and a mark.
_LETTERS = str.maketrans({"ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"})
_LIKE_SPECIAL = re.compile(r"([\\%_])")


class QueryError(DicomwebError):
    """A malformed query value: 400 with a message naming the attribute."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def fold_person_name(value: str) -> str:
    """The fuzzy-matching key of a PN value: ``" anders alice "``.

    Only the alphabetic component group is used. Accents are removed (Unicode NFKD, combining
    marks dropped; ø, æ, œ, ł, đ, ð, þ, ı spelled in base letters), case is folded
    (``str.casefold``, so ß is ss), and the name is split into words at
    ``^``, spaces and commas; the key is the words separated and surrounded by single spaces.
    """
    alphabetic = value.split("=", 1)[0]
    decomposed = unicodedata.normalize("NFKD", alphabetic)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().translate(_LETTERS)
    words = [w for w in _WORDS.split(plain) if w]
    return f" {' '.join(words)} " if words else ""


class _Glob(FunctionElement[bool]):
    """``column GLOB pattern`` on SQLite, ``column LIKE pattern`` elsewhere: case-sensitive everywhere.

    Both translations of the pattern are bound parameters, so cached statements stay correct.
    """

    type = Boolean()
    inherit_cache = True
    name = "wildcard_match"


@compiles(_Glob)
def _like(element: _Glob, compiler: Any, **kw: Any) -> str:
    column, _, like = list(element.clauses)
    return f"{compiler.process(column, **kw)} LIKE {compiler.process(like, **kw)} ESCAPE '\\'"


@compiles(_Glob, "sqlite")
def _glob(element: _Glob, compiler: Any, **kw: Any) -> str:
    column, glob, _ = list(element.clauses)
    return f"{compiler.process(column, **kw)} GLOB {compiler.process(glob, **kw)}"


def wildcard(column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """Case-sensitive DICOM wild card matching of ``pattern`` (``*`` and ``?``) against ``column``."""
    glob = "".join(f"[{c}]" if c in "[]" else c for c in pattern)  # '*' and '?' mean the same in GLOB
    like = _escape_like(pattern).replace("*", "%").replace("?", "_")
    return _Glob(column, literal(glob), literal(like))


def is_universal(value: str) -> bool:
    """An empty value or only ``*``: Universal Matching (PS3.4 §C.2.2.2.3)."""
    return value == "" or set(value) == {"*"}


def match(column: ColumnElement[Any], vr: str, value: str, keyword: str) -> ColumnElement[bool]:
    """The SQL condition for ``keyword`` (of value representation ``vr``) matching ``value``."""
    if is_universal(value):
        return true()
    if vr == "UI":
        try:
            uids = parse_uid_list(value)
        except InvalidUID as exc:
            raise QueryError(f"{keyword}: {exc} (wild cards are not allowed for UIDs)") from exc
        return column == uids[0] if len(uids) == 1 else column.in_(uids)
    if vr in ("DA", "TM"):
        return _range(column, vr, value, keyword)
    if vr in ("IS", "US"):
        if not _INTEGER.fullmatch(value.strip()):
            raise QueryError(f"{keyword}: {value[:64]!r} is not an integer")
        return column == int(value)
    if "*" in value or "?" in value:
        return wildcard(column, value)
    return column == value


def modality_list(values: str) -> list[str]:
    """``CT,MR`` or ``CT\\MR``: the modalities a ModalitiesInStudy query asks for (any of them)."""
    return [v for v in re.split(r"[,\\]", values) if v]


def _range(column: ColumnElement[Any], vr: str, value: str, keyword: str) -> ColumnElement[bool]:
    syntax = _DATE if vr == "DA" else _TIME
    example = "YYYYMMDD" if vr == "DA" else "HHMMSS"
    low, dash, high = value.partition("-")
    bounds = (low, high) if dash else (value,)
    for bound in bounds:
        if bound and not syntax.fullmatch(bound):
            raise QueryError(
                f"{keyword}: {value[:64]!r} is not a {vr} value or range "
                f"({example}, {example}-{example}, -{example} or {example}-; no wild cards)"
            )
    if not dash:
        return column == value
    if not low and not high:
        raise QueryError(f"{keyword}: a range needs at least one bound")
    conditions: list[ColumnElement[bool]] = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column <= (high if vr == "DA" else _time_upper(high)))
    return and_(*conditions)


def _time_upper(high: str) -> str:
    """Complete a partial TM upper bound so that every time within it is included."""
    return high + "235959.999999"[len(high) :] if len(high) < 6 else high + "999999"[: 7 - len(high)]


def fuzzy_person_name(folded: ColumnElement[Any], value: str) -> ColumnElement[bool]:
    """Fuzzy PN matching against a :func:`fold_person_name` column.

    The query is folded the same way (wild cards removed); it matches when every query word is
    the beginning of some word of the name, in any component and any order:
    ``ander^al`` and ``ALÍCE`` both match ``Anders^Alice``.
    """
    words = fold_person_name(value.replace("*", " ").replace("?", " ")).split()
    if not words:
        return true()
    return and_(*(folded.like(f"% {_escape_like(w)}%", escape="\\") for w in words))


def _escape_like(text: str) -> str:
    return _LIKE_SPECIAL.sub(r"\\\1", text)
