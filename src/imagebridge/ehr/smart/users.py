"""People who sign in to the EHR: patients, proxies and clinicians (argon2id password hashes).

A user's ``fhirUser`` (SMART App Launch 2.2 "Scopes for requesting identity data") is the FHIR
resource that stands for them; the patients they may act for follow from it: a Patient acts for
themself, a RelatedPerson for the patient it relates to, a Practitioner for any patient (what
they then see is the policy engine's decision).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.ehr.fhir.store import Query, Store
from imagebridge.ehr.tables import users

_hasher = PasswordHasher()
#: Verified against when the username is unknown, so both cases cost the same time.
_DUMMY_HASH = _hasher.hash("imagebridge-no-such-user")


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str
    display_name: str

    @property
    def is_clinician(self) -> bool:
        return self.fhir_user.startswith("Practitioner/")


class UserStore:
    """Create users and check their passwords."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, username: str, password: str, fhir_user: str, display_name: str = "") -> None:
        """Create or update a user (idempotent, for seeding and the admin CLI)."""
        values = {
            "password_hash": _hasher.hash(password),
            "fhir_user": fhir_user,
            "display_name": display_name or username,
        }
        async with self.engine.begin() as conn:
            found = await conn.execute(update(users).where(users.c.username == username).values(**values))
            if found.rowcount == 0:
                await conn.execute(insert(users).values(username=username, created_at=time.time(), **values))

    async def get(self, username: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        return None if row is None else User(row["username"], row["fhir_user"], row["display_name"])

    async def verify(self, username: str, password: str) -> User | None:
        """The user if ``password`` is theirs, else None (constant work for unknown names)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(users).where(users.c.username == username))).mappings().first()
        try:
            _hasher.verify(row["password_hash"] if row else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return None if row is None else User(row["username"], row["fhir_user"], row["display_name"])


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
