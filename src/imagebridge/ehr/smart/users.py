"""People who sign in to the EHR: patients, proxies and clinicians (argon2id password hashes).

A user's ``fhirUser`` (SMART App Launch 2.2 "Scopes for requesting identity data") is the FHIR
resource that stands for them; the patients they may act for follow from it: a Patient acts for
themself, a RelatedPerson for the patient it relates to, a Practitioner for any patient (what
they then see is the policy engine's decision). A user's roles say what the EHR's own web UI lets
them do and must fit their ``fhirUser``: ``patient`` (a Patient), ``proxy`` (a RelatedPerson),
``clinician`` (a Practitioner; opens charts and launches apps). A disabled user cannot sign in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.ehr.fhir.store import Query, Store
from imagebridge.ehr.tables import users

_hasher = PasswordHasher()
#: Verified against when the username is unknown, so both cases cost the same time.
_DUMMY_HASH = _hasher.hash("imagebridge-no-such-user")
#: Each role and the kind of ``fhirUser`` it needs.
ROLE_RESOURCES = {"patient": "Patient", "proxy": "RelatedPerson", "clinician": "Practitioner"}


class InvalidUser(ValueError):
    """A user definition the EHR cannot accept (the message says why)."""


def checked_roles(fhir_user: str, roles: Iterable[str] = ()) -> tuple[str, ...]:
    """``roles`` (or the one ``fhir_user`` implies when empty), each checked against ``fhir_user``."""
    kind, _, ident = fhir_user.partition("/")
    if kind not in ROLE_RESOURCES.values() or not ident or "/" in ident:
        raise InvalidUser(
            f"fhirUser must be Patient/<id>, RelatedPerson/<id> or Practitioner/<id>, not {fhir_user!r}"
        )
    chosen = tuple(dict.fromkeys(roles)) or tuple(r for r, k in ROLE_RESOURCES.items() if k == kind)
    for role in chosen:
        if role not in ROLE_RESOURCES:
            raise InvalidUser(f"unknown role {role!r} (roles: {', '.join(ROLE_RESOURCES)})")
        if ROLE_RESOURCES[role] != kind:
            raise InvalidUser(f"the {role} role needs a {ROLE_RESOURCES[role]} fhirUser, not {fhir_user}")
    return chosen


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str
    display_name: str
    roles: tuple[str, ...] = ()
    enabled: bool = True

    @property
    def is_clinician(self) -> bool:
        return "clinician" in self.roles


def _user(row: Any) -> User:
    return User(
        row["username"],
        row["fhir_user"],
        row["display_name"],
        tuple(row["roles"].split()),
        bool(row["enabled"]),
    )


class UserStore:
    """Create, list, disable and enable users; set and check their passwords."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(
        self, username: str, password: str, fhir_user: str, display_name: str = "", roles: Iterable[str] = ()
    ) -> None:
        """Create or update (and re-enable) a user: idempotent, for seeding."""
        values = _values(password, fhir_user, display_name or username, roles)
        async with self.engine.begin() as conn:
            found = await conn.execute(update(users).where(users.c.username == username).values(**values))
            if found.rowcount == 0:
                await conn.execute(insert(users).values(username=username, created_at=time.time(), **values))

    async def add(
        self, username: str, password: str, fhir_user: str, display_name: str = "", roles: Iterable[str] = ()
    ) -> User:
        """Create a new user; :class:`InvalidUser` if the name is taken."""
        values = _values(password, fhir_user, display_name or username, roles)
        async with self.engine.begin() as conn:
            taken = await conn.execute(select(users.c.username).where(users.c.username == username))
            if taken.first() is not None:
                raise InvalidUser(f"a user named {username!r} exists already")
            await conn.execute(insert(users).values(username=username, created_at=time.time(), **values))
        return User(username, fhir_user, str(values["display_name"]), tuple(str(values["roles"]).split()))

    async def get(self, username: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        return None if row is None else _user(row)

    async def all(self) -> list[User]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(users).order_by(users.c.username))).mappings().all()
        return [_user(r) for r in rows]

    async def set_enabled(self, username: str, enabled: bool) -> bool:
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(users).where(users.c.username == username).values(enabled=enabled)
            )
        return bool(done.rowcount)

    async def set_password(self, username: str, password: str) -> bool:
        """Store a new argon2id hash of ``password``; False for an unknown user."""
        async with self.engine.begin() as conn:
            done = await conn.execute(
                update(users).where(users.c.username == username).values(password_hash=_hasher.hash(password))
            )
        return bool(done.rowcount)

    async def verify(self, username: str, password: str) -> User | None:
        """The enabled user whose password this is, else None (constant work for unknown names)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        try:
            _hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        user = None if row is None else _user(row)
        return user if user is not None and user.enabled else None


def _values(password: str, fhir_user: str, display_name: str, roles: Iterable[str]) -> dict[str, object]:
    return {
        "password_hash": _hasher.hash(password),
        "fhir_user": fhir_user,
        "display_name": display_name,
        "roles": " ".join(checked_roles(fhir_user, roles)),
        "enabled": True,
    }


async def patients_for(store: Store, user: User) -> list[tuple[str, str]]:
    """(patient id, display name) of every patient ``user`` may act for, in name order."""
    kind, _, ident = user.fhir_user.partition("/")
    if kind == "Patient":
        ids = [ident]
    elif kind == "RelatedPerson":
        related = await store.read("RelatedPerson", ident)
        ref = str(((related or {}).get("patient") or {}).get("reference", ""))
        active = related is not None and related.get("active", True) is not False
        ids = [ref.removeprefix("Patient/")] if active and ref.startswith("Patient/") else []
    elif kind == "Practitioner":
        found, _ = await store.search(Query("Patient", [], count=500))
        ids = [str(p["id"]) for p in found]
    else:
        ids = []
    patients = await store.read_many([("Patient", i) for i in ids])
    return sorted(((str(p["id"]), display_name(p)) for p in patients), key=lambda p: p[1])


def display_name(patient: dict[str, object]) -> str:
    names = patient.get("name")
    if isinstance(names, list) and names and isinstance(names[0], dict):
        name = names[0]
        given = " ".join(str(g) for g in name.get("given", []))
        return f"{given} {name.get('family', '')}".strip() or str(patient.get("id"))
    return str(patient.get("id"))
