"""SMART scope grammar, v1 and v2 (SMART App Launch 2.2, "Scopes and Launch Context").

A resource scope is ``( patient | user | system ) "/" ( <ResourceType> | "*" ) "." <permissions>
[ "?" param=value *( "&" param=value ) ]``. v2 permissions are a non-empty, in-order subset of
``cruds``; the v1 suffixes map as ``.read`` → ``rs``, ``.write`` → ``cud``, ``.*`` → ``cruds``.
Everything else (``openid``, ``fhirUser``, ``launch``, ``launch/patient``, ``offline_access`` …) is
kept verbatim as an "other" scope token (RFC 6749 §3.3).

SMART never combines grants: each granted scope is applied on its own, with its own query
constraints, which is why :meth:`ScopeSet.allows` returns the covering scopes rather than a bool.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal, cast
from urllib.parse import quote, unquote

__all__ = [
    "INTERACTIONS",
    "LEVELS",
    "Interaction",
    "InvalidScope",
    "Level",
    "Scope",
    "ScopeSet",
    "covers_imaging_read",
    "parse_scope",
    "parse_scopes",
]

Level = Literal["patient", "user", "system"]
Interaction = Literal["c", "r", "u", "d", "s"]

LEVELS: Final[tuple[Level, ...]] = ("patient", "user", "system")
#: The in-order permission string of SMART v2 (§ "Scopes for requesting FHIR resources").
INTERACTIONS: Final = "cruds"

_V1_TO_V2: Final[dict[str, str]] = {"read": "rs", "write": "cud", "*": "cruds"}
_V2_TO_V1: Final[dict[frozenset[str], str]] = {frozenset(v): k for k, v in _V1_TO_V2.items()}

# "<word>/<Type or *>.<something>": looks like a resource scope, so a bad level is an error.
_RESOURCE_SHAPE: Final = re.compile(r"(?P<level>[A-Za-z]+)/(?P<type>\*|[A-Za-z]+)\.(?P<rest>.*)", re.DOTALL)
_RESOURCE_TYPE: Final = re.compile(r"(\*|[A-Z][A-Za-z]*)")
_PARAM_NAME: Final = re.compile(r"[A-Za-z0-9_.:\-]+")
# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
# Characters left as-is when rendering constraint values (token systems, URLs, code|system).
_SAFE_VALUE_CHARS: Final = ":/|.-_~,$@!*'()"
_READ_INTERACTIONS: Final[tuple[Interaction, ...]] = ("r", "s")


def _in_order_subsets(letters: str) -> frozenset[str]:
    subsets = {""}
    for letter in letters:
        subsets |= {s + letter for s in subsets}
    return frozenset(subsets)


_IN_ORDER_SUBSETS: Final = _in_order_subsets(INTERACTIONS)


class InvalidScope(ValueError):
    """A scope that claims to be a SMART resource scope but does not follow the grammar."""


@dataclass(frozen=True)
class Scope:
    """One SMART resource scope.

    Equality is semantic: ``patient/Observation.read`` equals ``patient/Observation.rs``. ``text`` keeps
    the spelling the scope was parsed from (so a client gets back exactly what it asked for), ``v1``
    remembers that the client used v1 syntax (SMART: return v1 scopes when v1 was requested).
    """

    level: Level
    resource_type: str
    permissions: frozenset[str]
    constraints: tuple[tuple[str, str], ...] = ()
    text: str | None = field(default=None, compare=False, repr=False)
    v1: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise InvalidScope(f"unknown scope level {self.level!r}")
        if not _RESOURCE_TYPE.fullmatch(self.resource_type):
            raise InvalidScope(f"invalid resource type {self.resource_type!r}")
        if not self.permissions or not self.permissions <= frozenset(INTERACTIONS):
            raise InvalidScope(f"invalid permissions {sorted(self.permissions)!r}")
        for name, value in self.constraints:
            if not _PARAM_NAME.fullmatch(name) or not value:
                raise InvalidScope(f"invalid query constraint {name!r}={value!r}")
        # Constraints are a conjunction: order and repetition carry no meaning.
        object.__setattr__(self, "constraints", tuple(sorted(set(self.constraints))))

    def to_string(self) -> str:
        """The scope as parsed, or its canonical spelling (v1 suffix if the client used v1)."""
        if self.text is not None:
            return self.text
        suffix = _V2_TO_V1.get(self.permissions) if self.v1 and not self.constraints else None
        if suffix is None:
            suffix = "".join(p for p in INTERACTIONS if p in self.permissions)
        query = "&".join(f"{n}={quote(v, safe=_SAFE_VALUE_CHARS)}" for n, v in self.constraints)
        return f"{self.level}/{self.resource_type}.{suffix}" + (f"?{query}" if query else "")

    def covers(self, other: Scope) -> bool:
        """True when everything ``other`` grants is also granted by this scope.

        A scope with fewer query constraints matches more resources, so ``self``'s constraints must
        be a subset of ``other``'s.
        """
        return (
            self.level == other.level
            and self.resource_type in ("*", other.resource_type)
            and other.permissions <= self.permissions
            and set(self.constraints) <= set(other.constraints)
        )

    def intersect(self, other: Scope) -> Scope | None:
        """The scope granting what both grant, or None if they share nothing.

        The result keeps this scope's spelling when it is unchanged.
        """
        if self.level != other.level:
            return None
        if "*" in (self.resource_type, other.resource_type):
            resource_type = other.resource_type if self.resource_type == "*" else self.resource_type
        elif self.resource_type == other.resource_type:
            resource_type = self.resource_type
        else:
            return None
        permissions = self.permissions & other.permissions
        if not permissions:
            return None
        result = Scope(
            self.level, resource_type, permissions, self.constraints + other.constraints, v1=self.v1
        )
        return self if result == self else result


def parse_scope(text: str) -> Scope | None:
    """Parse one scope token (SMART App Launch 2.2 "Scopes and Launch Context").

    Returns None for scopes that are not resource scopes (``openid``, ``fhirUser``, ``launch``,
    ``launch/patient``, ``offline_access``, ``online_access`` and any other scope token). Raises
    :class:`InvalidScope` for a malformed resource scope: unknown level, unknown, repeated or
    out-of-order permission letters, v1 suffix with a query, or a bad query.
    """
    if not _SCOPE_TOKEN.fullmatch(text):
        raise InvalidScope(f"invalid scope token {text!r}")
    shape = _RESOURCE_SHAPE.fullmatch(text)
    if shape is None or shape["level"] == "launch":
        return None
    level = shape["level"]
    if level not in LEVELS:
        raise InvalidScope(f"unknown scope level {level!r} in {text!r}")
    suffix, has_query, query = shape["rest"].partition("?")
    if suffix in _V1_TO_V2:
        if has_query:
            raise InvalidScope(f"v1 scope {text!r} cannot carry a query")
        permissions, v1 = _V1_TO_V2[suffix], True
    else:
        permissions, v1 = suffix, False
        if not permissions or permissions not in _IN_ORDER_SUBSETS:
            raise InvalidScope(f"permissions {suffix!r} in {text!r} are not an in-order subset of 'cruds'")
    constraints = _parse_query(query, text) if has_query else ()
    return Scope(
        cast(Level, level),
        shape["type"],
        frozenset(permissions),
        constraints,
        text=text,
        v1=v1,
    )


def _parse_query(query: str, text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        if not eq or not _PARAM_NAME.fullmatch(name) or not value:
            raise InvalidScope(f"invalid query constraint {part!r} in {text!r}")
        pairs.append((name, unquote(value)))
    return tuple(pairs)


@dataclass(frozen=True)
class ScopeSet:
    """A parsed ``scope`` parameter: resource scopes plus other scope tokens, each without duplicates."""

    resource_scopes: tuple[Scope, ...] = ()
    others: tuple[str, ...] = ()

    def allows(self, level_set: Collection[str], resource_type: str, interaction: Interaction) -> list[Scope]:
        """The scopes at one of ``level_set`` that permit ``interaction`` on ``resource_type``.

        An empty list means the request is not covered (403 ``insufficient_scope``). Otherwise the
        caller must apply each returned scope's own query constraints separately and grant what any
        one of them allows; SMART never combines the constraints of different grants.
        """
        return [
            s
            for s in self.resource_scopes
            if s.level in level_set
            and s.resource_type in ("*", resource_type)
            and interaction in s.permissions
        ]

    def narrowed_to(self, requested: ScopeSet) -> ScopeSet:
        """What may be granted of ``requested`` when this set is the upper bound.

        Used at refresh (RFC 6749 §6), consent and Backend Services mediation ("assure that the scope
        requested is within the scope pre-authorized to the client"). Each requested scope is
        intersected with every scope of this set; a requested scope fully covered is kept with its
        original spelling. Other scope tokens are kept when this set contains them too.
        """
        granted: list[Scope] = []
        for wanted in requested.resource_scopes:
            pieces = [p for p in (wanted.intersect(bound) for bound in self.resource_scopes) if p is not None]
            granted.extend(_merge(wanted, pieces))
        others = tuple(o for o in requested.others if o in self.others)
        return ScopeSet(_unique(granted), others)

    def to_string(self) -> str:
        """The space-separated ``scope`` value (RFC 6749 §3.3)."""
        return " ".join([s.to_string() for s in self.resource_scopes] + list(self.others))


def _merge(wanted: Scope, pieces: list[Scope]) -> list[Scope]:
    """Union the permissions of pieces that differ only in permissions, then drop covered pieces."""
    by_target: dict[tuple[str, tuple[tuple[str, str], ...]], frozenset[str]] = {}
    for piece in pieces:
        key = (piece.resource_type, piece.constraints)
        by_target[key] = by_target.get(key, frozenset()) | piece.permissions
    merged = [Scope(wanted.level, rt, perms, cons, v1=wanted.v1) for (rt, cons), perms in by_target.items()]
    merged = [wanted if m == wanted else m for m in merged]
    return [m for i, m in enumerate(merged) if not any(o.covers(m) for j, o in enumerate(merged) if j != i)]


def _unique(scopes: Iterable[Scope]) -> tuple[Scope, ...]:
    return tuple(dict.fromkeys(scopes))


def parse_scopes(value: str) -> ScopeSet:
    """Parse a space-separated ``scope`` parameter (RFC 6749 §3.3) into a :class:`ScopeSet`.

    Duplicates are dropped; order is kept. Raises :class:`InvalidScope` if any token is malformed.
    """
    resource: list[Scope] = []
    others: list[str] = []
    for token in value.split(" "):
        if not token:
            continue
        scope = parse_scope(token)
        if scope is None:
            others.append(token)
        else:
            resource.append(scope)
    return ScopeSet(_unique(resource), tuple(dict.fromkeys(others)))


def covers_imaging_read(scopes: ScopeSet, level: Level) -> bool:
    """True if ``scopes`` allow reading or searching ``ImagingStudy`` (or ``*``) at ``level``.

    This is the coarse check of the imaging gate (SMART Imaging Access: ``patient/ImagingStudy.rs``);
    query-constrained scopes still count here, their constraints are applied via :meth:`ScopeSet.allows`.
    """
    return any(scopes.allows((level,), "ImagingStudy", i) for i in _READ_INTERACTIONS)
