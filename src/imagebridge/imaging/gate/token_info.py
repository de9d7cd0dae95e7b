"""What an introspection answer means to the imaging system (RFC 7662 §2.2; SMART 2.2).

Anything malformed is treated as an EHR fault (fail closed), never as permission
(security.md FT-03): ``active`` must be the JSON boolean ``true``, ``exp`` an integer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from imagebridge.common.smart_scopes import (
    LEVELS,
    InvalidScope,
    Level,
    ScopeSet,
    covers_imaging_read,
    parse_scopes,
)

IMAGING_GRANT = "urn:imagebridge:imaging-grant"
#: The grant's ``write`` modes (docs/gate.md "Writing"): any PatientID, the listed MRNs only, or
#: ask the EHR per PatientID.
WRITE_MODES = frozenset({"any", "mrns", "ask"})


class MalformedIntrospection(ValueError):
    """The introspection response is not a usable RFC 7662 answer."""


@dataclass(frozen=True)
class WriteDecision:
    """For whom a token may store imaging, as the grant's ``write`` member says (docs/gate.md
    "Writing"; security.md ISO-08). ``mode`` is one of :data:`WRITE_MODES`, or None when the EHR
    sent no ``write`` member: then for no one (missing context is never system-level access)."""

    mode: str | None = None
    #: With ``mode == "mrns"``: the DICOM PatientIDs the token may store instances for.
    mrns: frozenset[str] = frozenset()

    def allows(self, patient_id: str) -> bool | None:
        """May the token store instances with ``patient_id``: yes, no, or None (ask the EHR)."""
        if self.mode == "any":
            return True
        if self.mode == "mrns":
            return patient_id in self.mrns
        return None if self.mode == "ask" else False

    @property
    def unlimited(self) -> bool:
        """Any PatientID, without asking: the client is a registered imaging source."""
        return self.mode == "any"


@dataclass(frozen=True)
class TokenInfo:
    active: bool
    scopes: ScopeSet = field(default_factory=ScopeSet)
    client_id: str = ""
    exp: float = 0.0
    #: When the EHR says it issued the token (its clock), if it says.
    iat: float | None = None
    patient: str | None = None
    user: str | None = None
    audiences: tuple[str, ...] | None = None
    #: From our EHR: the studies this token may reach, or None meaning "ask per study".
    allowed_studies: frozenset[str] | None = None
    #: The granted scopes as the EHR wrote them (``scopes`` parsed).
    scope_text: str = ""
    #: From our EHR: the grant's ``write`` mode and MRNs, decided by :attr:`write`.
    write_mode: str | None = None
    write_mrns: frozenset[str] = frozenset()

    @cached_property
    def imaging_read_levels(self) -> frozenset[Level]:
        """The levels whose granted scopes allow reading ImagingStudy (computed once per answer)."""
        return frozenset(level for level in LEVELS if covers_imaging_read(self.scopes, level))

    @cached_property
    def imaging_write_levels(self) -> frozenset[Level]:
        """The levels whose granted scopes allow creating ImagingStudy (STOW-RS)."""
        return frozenset(level for level in LEVELS if self.scopes.allows((level,), "ImagingStudy", "c"))

    @cached_property
    def write(self) -> WriteDecision:
        """For whom the token may store imaging (:attr:`write_mode`, :attr:`write_mrns`)."""
        return WriteDecision(self.write_mode, self.write_mrns)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form for a shared cache (it never contains the token itself)."""
        data = asdict(self)
        del data["scopes"]
        data["audiences"] = list(self.audiences) if self.audiences is not None else None
        data["allowed_studies"] = sorted(self.allowed_studies) if self.allowed_studies is not None else None
        data["write_mrns"] = sorted(self.write_mrns)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenInfo:
        if not data["active"]:
            return INACTIVE
        return cls(
            active=True,
            scopes=parse_scopes(data["scope_text"]),
            client_id=data["client_id"],
            exp=data["exp"],
            iat=data.get("iat"),
            patient=data["patient"],
            user=data["user"],
            audiences=tuple(data["audiences"]) if data["audiences"] is not None else None,
            allowed_studies=(
                frozenset(data["allowed_studies"]) if data["allowed_studies"] is not None else None
            ),
            scope_text=data["scope_text"],
            write_mode=data.get("write_mode"),
            write_mrns=frozenset(data.get("write_mrns", ())),
        )


INACTIVE = TokenInfo(active=False)


def parse_introspection(body: dict[str, Any]) -> TokenInfo:
    active = body.get("active")
    if active is False:
        return INACTIVE
    if active is not True:
        raise MalformedIntrospection("'active' is not a boolean")
    exp = body.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise MalformedIntrospection("an active token has no integer 'exp'")
    iat = body.get("iat")
    if iat is not None and (not isinstance(iat, int) or isinstance(iat, bool)):
        raise MalformedIntrospection("'iat' is not an integer")
    scope_text = body.get("scope", "")
    if not isinstance(scope_text, str):
        raise MalformedIntrospection("'scope' is not a string")
    try:
        scopes = parse_scopes(scope_text)
    except InvalidScope as exc:
        raise MalformedIntrospection(f"invalid scope: {exc}") from exc
    aud = body.get("aud")
    audiences = (
        (aud,)
        if isinstance(aud, str)
        else tuple(a for a in aud if isinstance(a, str))
        if isinstance(aud, list)
        else None
    )
    patient = body.get("patient")
    user = body.get("fhirUser") or body.get("sub")
    grant = body.get(IMAGING_GRANT)
    allowed: frozenset[str] | None = None
    if isinstance(grant, dict) and grant.get("mode") == "studies":
        studies = grant.get("studies")
        if not isinstance(studies, list) or grant.get("patient") != patient:
            raise MalformedIntrospection("the imaging grant does not match the token's patient")
        allowed = frozenset(str(s) for s in studies)
    write = grant.get("write") if isinstance(grant, dict) else None
    write_mode, write_mrns = _write_grant(write) if write is not None else (None, frozenset[str]())
    return TokenInfo(
        active=True,
        scopes=scopes,
        client_id=str(body.get("client_id", "")),
        exp=float(exp),
        iat=float(iat) if iat is not None else None,
        patient=str(patient) if isinstance(patient, str) and patient else None,
        user=str(user) if isinstance(user, str) else None,
        audiences=audiences,
        allowed_studies=allowed,
        scope_text=scope_text,
        write_mode=write_mode,
        write_mrns=write_mrns,
    )


def _write_grant(write: Any) -> tuple[str, frozenset[str]]:
    """The mode and MRNs of the grant's ``write`` member (malformed: an EHR fault, FT-03)."""
    mode = write.get("mode") if isinstance(write, dict) else None
    if mode not in WRITE_MODES:
        raise MalformedIntrospection("the imaging grant's write member has no known mode")
    mrns = write.get("mrns", []) if mode == "mrns" else []
    if not isinstance(mrns, list) or not all(isinstance(m, str) for m in mrns):
        raise MalformedIntrospection("the imaging grant's write MRNs are not a list of strings")
    return str(mode), frozenset(mrns)


def parse_write_decision(body: dict[str, Any], patient_id: str) -> bool:
    """The EHR's answer to "may this token store imaging for ``patient_id``?" (an introspection
    asked with the ``imaging_write_patient`` parameter; docs/gate.md "Writing")."""
    info = parse_introspection(body)
    if not info.active:
        return False
    known = info.write.allows(patient_id)
    if known is not None:
        return known
    write = body[IMAGING_GRANT]["write"]  # mode "ask": the answer to the question asked
    if write.get("patient_id") != patient_id:
        return False
    allowed = write.get("allowed")
    if not isinstance(allowed, bool):
        raise MalformedIntrospection("the write decision has no boolean 'allowed'")
    return allowed
