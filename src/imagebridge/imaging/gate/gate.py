"""The delegated-authorization gate: every DICOMweb request passes here first (ARCHITECTURE.md).

Bearer token → introspection at the EHR (cached within the revocation window, never past
``exp``) → audience and scope checks → per-study decision, from the EHR's imaging grant when it
sent one, otherwise by asking the EHR's FHIR API with the caller's own token
(``ImagingStudy?identifier=urn:oid:<uid>``; Argonaut SMART Imaging Access §"Authorization
patterns"). The EHR unreachable means 503 + Retry-After: the gate never guesses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import JSONResponse, bearer_challenge
from imagebridge.common.smart_scopes import Interaction, Level, covers_imaging_read
from imagebridge.common.tokens import digest, token_id
from imagebridge.imaging.gate.cache import SingleFlightCache
from imagebridge.imaging.gate.ehr_client import EhrClient, EhrUnavailable
from imagebridge.imaging.gate.token_info import (
    INACTIVE,
    MalformedIntrospection,
    TokenInfo,
    parse_introspection,
)

Operation = Literal["read", "write"]


class GateRefusal(Exception):
    """The request is refused; ``response`` says how (401, 403, 404 or 503)."""

    def __init__(self, response: Response, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.reason = reason


@dataclass(frozen=True)
class Access:
    """An admitted request: the caller's token and what the EHR said about it."""

    token: str
    info: TokenInfo
    levels: frozenset[Level]

    @property
    def token_id(self) -> str:
        return token_id(self.token)


def unavailable(reason: str) -> GateRefusal:
    return GateRefusal(
        JSONResponse(
            {"error": "temporarily_unavailable", "error_description": reason}, 503, {"Retry-After": "5"}
        ),
        reason,
    )


class Gate:
    def __init__(self, ehr: EhrClient, own_base: str, *, revocation_window: int, negative_ttl: int) -> None:
        self.ehr = ehr
        self.own_base = own_base.rstrip("/")
        self.revocation_window = revocation_window
        self.negative_ttl = negative_ttl
        self.tokens: SingleFlightCache[TokenInfo] = SingleFlightCache()
        self.studies: SingleFlightCache[bool] = SingleFlightCache()

    async def admit(self, request: Request, operation: Operation = "read") -> Access:
        """Authenticate the request and check its scopes; raise :class:`GateRefusal` otherwise."""
        token = _bearer(request)
        info = await self._introspect(token)
        if not info.active or info.exp <= time.time():
            raise GateRefusal(
                bearer_challenge("invalid_token", "the access token is not active"), "inactive token"
            )
        if info.audiences is not None and self.own_base not in info.audiences:
            raise GateRefusal(
                bearer_challenge("invalid_token", "the token is not valid at this server"), "audience"
            )
        interaction: Interaction | None = "c" if operation == "write" else None
        levels: set[Level] = set()
        for level in ("patient", "user", "system"):
            if level == "patient" and not info.patient:
                continue  # missing patient context is never system-level access
            covered = (
                info.scopes.allows((level,), "ImagingStudy", interaction)
                if interaction
                else covers_imaging_read(info.scopes, level)
            )
            if covered:
                levels.add(level)
        if not levels:
            raise GateRefusal(
                bearer_challenge("insufficient_scope", "no granted scope covers this request", status=403),
                "insufficient scope",
            )
        return Access(token=token, info=info, levels=frozenset(levels))

    async def may_see_study(self, access: Access, study_uid: str) -> bool:
        """Whether the EHR's current decision for this token covers ``study_uid``."""
        info = access.info
        if info.allowed_studies is not None and access.levels == {"patient"}:
            return study_uid in info.allowed_studies
        key = f"{digest(access.token)}:{study_uid}"

        async def ask() -> tuple[bool, float]:
            status, body = await self.ehr.fhir_get(
                "ImagingStudy", {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}, access.token
            )
            if status in (401, 403, 404):
                return False, time.time() + self.negative_ttl
            if status != 200 or body.get("resourceType") != "Bundle":
                raise EhrUnavailable(f"the EHR answered the study query with {status}")
            allowed = any(
                e.get("search", {}).get("mode", "match") == "match"
                and e.get("resource", {}).get("resourceType") == "ImagingStudy"
                for e in body.get("entry", [])
            )
            return allowed, min(info.exp, time.time() + self.revocation_window)

        try:
            return await self.studies.get(key, ask)
        except EhrUnavailable as exc:
            raise unavailable(str(exc)) from exc

    async def _introspect(self, token: str) -> TokenInfo:
        async def ask() -> tuple[TokenInfo, float]:
            try:
                info = parse_introspection(await self.ehr.introspect(token))
            except MalformedIntrospection as exc:
                raise EhrUnavailable(f"unusable introspection answer: {exc}") from exc
            if info is INACTIVE:
                return info, time.time() + self.negative_ttl
            return info, min(info.exp, time.time() + self.revocation_window)

        try:
            return await self.tokens.get(digest(token), ask)
        except EhrUnavailable as exc:
            raise unavailable(str(exc)) from exc


def _bearer(request: Request) -> str:
    values = request.headers.getlist("authorization")
    if not values:
        raise GateRefusal(bearer_challenge(None, "a bearer token is required"), "no token")
    scheme, _, token = values[0].partition(" ")
    token = token.strip()
    if len(values) > 1 or scheme.lower() != "bearer" or not token or " " in token or len(token) > 4096:
        raise GateRefusal(
            bearer_challenge("invalid_token", "malformed Authorization header"), "malformed token"
        )
    return token
