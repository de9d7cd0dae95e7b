"""Consent resources that withhold imaging from apps (FHIR R4 Consent, ``scope`` = patient-privacy).

A ``deny`` provision (the root one, or a nested one) of an ``active`` Consent withholds:

- from the apps named in ``provision.actor`` (``reference.identifier`` with system
  :data:`CLIENT_SYSTEM` and the app's ``client_id``), or from every app when it names no actor;
- the resources in ``provision.data`` (e.g. ``ImagingStudy/123``), or every resource of a type listed
  in ``provision.class`` (system ``http://hl7.org/fhir/resource-types``, e.g. ``ImagingStudy``), or,
  when it names neither, every ImagingStudy of the patient;
- during ``provision.period`` when one is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

#: Identifier system naming an app (a registered SMART client) in ``Consent.provision.actor``.
CLIENT_SYSTEM: Final = "urn:imagebridge:client-id"
RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"


@dataclass
class Withheld:
    """What consents withhold from one app for one patient."""

    references: set[str] = field(default_factory=set)  # "ImagingStudy/<id>"
    types: set[str] = field(default_factory=set)  # whole resource types
    why: list[str] = field(default_factory=list)


def _provisions(provision: Any) -> Iterator[dict[str, Any]]:
    if isinstance(provision, dict):
        yield provision
        for nested in provision.get("provision") or []:
            yield from _provisions(nested)


def _in_period(provision: dict[str, Any], now: str) -> bool:
    period = provision.get("period") or {}
    start, end = period.get("start"), period.get("end")
    return (not isinstance(start, str) or start <= now) and (not isinstance(end, str) or now <= end)


def _names_app(provision: dict[str, Any], client_id: str) -> bool:
    actors = provision.get("actor") or []
    if not actors:
        return True
    for actor in actors:
        ident = ((actor or {}).get("reference") or {}).get("identifier") or {}
        if ident.get("system") == CLIENT_SYSTEM and ident.get("value") == client_id:
            return True
    return False


def withheld_from(consents: list[dict[str, Any]], client_id: str, now: str) -> Withheld:
    """Fold a patient's consents into what they withhold from ``client_id`` at ``now``."""
    result = Withheld()
    for consent in consents:
        if consent.get("status") != "active":
            continue
        for provision in _provisions(consent.get("provision")):
            if provision.get("type") != "deny" or not _in_period(provision, now):
                continue
            if not _names_app(provision, client_id):
                continue
            refs = [
                str(d["reference"]["reference"])
                for d in provision.get("data") or []
                if isinstance((d or {}).get("reference"), dict) and d["reference"].get("reference")
            ]
            types = [
                str(c["code"])
                for c in provision.get("class") or []
                if isinstance(c, dict) and c.get("system", RESOURCE_TYPES) == RESOURCE_TYPES and c.get("code")
            ]
            if not refs and not types:
                types = ["ImagingStudy"]
            result.references.update(refs)
            result.types.update(types)
            result.why.append(f"Consent/{consent.get('id')} denies {', '.join(refs + types)}")
    return result
