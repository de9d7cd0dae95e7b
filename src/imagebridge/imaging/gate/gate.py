"""The delegated-authorization gate: every DICOMweb request passes here first (ARCHITECTURE.md).

Bearer token → introspection at the EHR (cached within the revocation window, never past
``exp``) → audience and scope checks → per-study decision, from the EHR's imaging grant when it
sent one, otherwise by asking the EHR's FHIR API with the caller's own token
(``ImagingStudy?identifier=urn:oid:<uid>``; Argonaut SMART Imaging Access §"Authorization
patterns"). The EHR unreachable means 503 + Retry-After: the gate never guesses.

Writes (STOW-RS) are also decided per instance, by its DICOM PatientID (security.md ISO-08): the
grant's ``write`` member says any PatientID, the listed MRNs, or "ask" (one introspection with
``imaging_write_patient``, cached per token and PatientID like a study decision).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio.from_thread
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.common.responses import JSONResponse, bearer_challenge
from imagebridge.common.smart_scopes import Level
from imagebridge.common.tokens import digest
from imagebridge.imaging.dicomweb.errors import not_found as not_found_response
from imagebridge.imaging.gate.cache import Backend, SingleFlightCache
from imagebridge.imaging.gate.capability import Capabilities, Capability, InvalidCapability
from imagebridge.imaging.gate.ehr_client import EhrClient, EhrUnavailable
from imagebridge.imaging.gate.token_info import (
    INACTIVE,
    MalformedIntrospection,
    TokenInfo,
    parse_introspection,
    parse_write_decision,
)

log = logging.getLogger(__name__)

Operation = Literal["read", "write"]
#: Seconds of clock difference with the EHR absorbed when reading ``exp`` and ``iat`` of an
#: active token (security.md FT-14: ±30 s is tolerated; OIDF and the SMART test kit allow 60).
CLOCK_LEEWAY = 60
#: Identifier system of Study Instance UIDs on ImagingStudy (Argonaut SMART Imaging Access).
UID_SYSTEM = "urn:dicom:uid"
#: Introspection request parameter of a write decision (the EHR's ``WRITE_PATIENT``).
WRITE_PATIENT = "imaging_write_patient"
#: Study UIDs decided by one FHIR search (keeps the query URL well under common 8 KB limits).
STUDY_BATCH = 50
#: Study batches of one QIDO-RS page asked of the EHR at the same time.
STUDY_QUERIES = 8


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

    @functools.cached_property
    def digest(self) -> str:
        """The token's digest: its key in the gate's caches (computed once per request)."""
        return digest(self.token)

    @property
    def token_id(self) -> str:
        """The token's id for audit records (:func:`~imagebridge.common.tokens.token_id`)."""
        return self.digest[:16]


def unavailable(reason: str) -> GateRefusal:
    return GateRefusal(
        JSONResponse(
            {"error": "temporarily_unavailable", "error_description": reason}, 503, {"Retry-After": "5"}
        ),
        reason,
    )


class Gate:
    """Admission (who, with which scopes) and per-study decisions, cached within declared bounds.

    ``token_backend`` and ``study_backend`` say where cached answers live (this process by
    default; Redis when several workers share them, see :mod:`.redis_cache`).
    """

    def __init__(
        self,
        ehr: EhrClient,
        own_base: str,
        *,
        revocation_window: int,
        negative_ttl: int,
        token_backend: Backend[TokenInfo] | None = None,
        study_backend: Backend[bool] | None = None,
        capabilities: Capabilities | None = None,
    ) -> None:
        self.ehr = ehr
        #: Sealing capability URLs; None when they are off (the default).
        self.capabilities = capabilities
        self.own_base = own_base.rstrip("/")
        self.revocation_window = revocation_window
        self.negative_ttl = negative_ttl
        self.tokens: SingleFlightCache[TokenInfo] = SingleFlightCache(token_backend)
        self.studies: SingleFlightCache[bool] = SingleFlightCache(study_backend)

    async def admit(self, request: Request, operation: Operation = "read") -> Access:
        """Authenticate the request and check its scopes; raise :class:`GateRefusal` otherwise."""
        token = _bearer(request)
        return await self._admit_token(token, operation)

    async def admit_capability(self, request: Request) -> Access:
        """Admit a read through ``{base}/cap/{capability}/studies/{study}…`` (spec.md §1.7).

        The capability must open under our key, name the study of the path, be unexpired, and
        the token it was issued under must still be admitted; otherwise 403 (ARCHITECTURE.md).
        The per-study decision then runs as for a bearer request.
        """
        if self.capabilities is None:
            raise GateRefusal(not_found_response(), "capability URLs are off")
        try:
            capability = self.capabilities.open(request.path_params["capability"])
        except InvalidCapability as exc:
            raise _capability_refused("invalid capability") from exc
        if capability.study_uid != request.path_params.get("study"):
            raise _capability_refused("capability for another study")
        if capability.exp <= time.time():
            raise _capability_refused("capability expired")
        try:
            return await self._admit_token(capability.token, "read")
        except GateRefusal as refusal:
            if refusal.response.status_code == 503:
                raise
            raise _capability_refused(f"capability token refused: {refusal.reason}") from refusal

    def issue_capability(self, access: Access, study_uid: str) -> tuple[str, float]:
        """A sealed capability for one study under ``access``'s token, and its expiry (the token's)."""
        if self.capabilities is None:
            raise GateRefusal(not_found_response(), "capability URLs are off")
        exp = access.info.exp
        return self.capabilities.seal(Capability(study_uid, access.token, access.info.client_id, exp)), exp

    async def _admit_token(self, token: str, operation: Operation) -> Access:
        info = await self._introspect(token)
        if not info.active:
            raise GateRefusal(
                bearer_challenge("invalid_token", "the access token is not active"), "inactive token"
            )
        skew = clock_skew(info, time.time())
        if skew is not None:
            log.warning(
                "clock skew: the EHR calls a token active but its %s is %.0f s off this host's clock "
                "(more than the %d s leeway); refusing it until the clocks agree (check NTP)",
                *skew,
                CLOCK_LEEWAY,
            )
            raise GateRefusal(
                bearer_challenge("invalid_token", "the access token is not active"), f"clock skew ({skew[0]})"
            )
        if info.audiences is not None and self.own_base not in info.audiences:
            raise GateRefusal(
                bearer_challenge("invalid_token", "the token is not valid at this server"), "audience"
            )
        covered = info.imaging_write_levels if operation == "write" else info.imaging_read_levels
        levels = covered if info.patient else covered - {"patient"}
        if not levels:
            if "patient" in covered:
                # SMART: patient-level scopes come with a patient context; without one the EHR's
                # answer is inconsistent, and missing context is never system-level access.
                raise GateRefusal(
                    bearer_challenge("invalid_token", "a patient-level token without patient context"),
                    "patient scope without patient",
                )
            raise GateRefusal(
                bearer_challenge("insufficient_scope", "no granted scope covers this request", status=403),
                "insufficient scope",
            )
        return Access(token=token, info=info, levels=levels)

    @staticmethod
    def study_restriction(access: Access) -> frozenset[str] | None:
        """The studies a patient-context token may reach, as the EHR's grant lists them.

        None means the grant lists none: decide per study (:meth:`may_see_study`).
        """
        info = access.info
        if info.allowed_studies is not None and access.levels == {"patient"}:
            return info.allowed_studies
        return None

    async def visible_studies(self, access: Access, study_uids: Sequence[str]) -> frozenset[str]:
        """Which of ``study_uids`` this token may see, asking the EHR once per batch of undecided ones.

        One FHIR search ``ImagingStudy?identifier=<uid1>,<uid2>,…`` with the caller's token decides
        a whole batch (the EHR's policy filters the results); each answer is cached as
        :meth:`may_see_study` would cache it.
        """
        restriction = self.study_restriction(access)
        if restriction is not None:
            return frozenset(u for u in study_uids if u in restriction)
        prefix = access.digest
        visible: set[str] = set()
        undecided: list[str] = []
        for uid in dict.fromkeys(study_uids):
            known = await self.studies.peek(f"{prefix}:{uid}")
            if known is None:
                undecided.append(uid)
            elif known:
                visible.add(uid)
        asking = asyncio.Semaphore(STUDY_QUERIES)

        async def decide(batch: list[str]) -> frozenset[str]:
            async with asking:
                found, expires_at = await self._ask_studies(access, batch)
            for uid in batch:
                allowed = uid in found
                expiry = expires_at if allowed else time.time() + self.negative_ttl
                await self.studies.put(f"{prefix}:{uid}", allowed, expiry)
            return found.intersection(batch)

        # the batches are asked concurrently, within the request's one EHR budget
        batches = [undecided[s : s + STUDY_BATCH] for s in range(0, len(undecided), STUDY_BATCH)]
        answers = await asyncio.gather(*(decide(b) for b in batches), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            visible |= answer
        return frozenset(visible)

    async def _ask_studies(self, access: Access, study_uids: Sequence[str]) -> tuple[frozenset[str], float]:
        """The subset of ``study_uids`` the EHR returns to this token, and until when to trust it."""
        identifiers = ",".join(f"{UID_SYSTEM}|urn:oid:{u}" for u in study_uids)
        try:
            status, body = await self.ehr.fhir_get(
                "ImagingStudy", {"identifier": identifiers, "_count": str(len(study_uids))}, access.token
            )
        except EhrUnavailable as exc:
            raise unavailable(str(exc)) from exc
        if status in (401, 403, 404):
            return frozenset(), time.time()
        if status != 200 or body.get("resourceType") != "Bundle":
            raise unavailable(f"the EHR answered the study query with {status}")
        found = {
            ident["value"].removeprefix("urn:oid:")
            for e in body.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
            and e.get("resource", {}).get("resourceType") == "ImagingStudy"
            for ident in e["resource"].get("identifier", [])
            if ident.get("system") == UID_SYSTEM and isinstance(ident.get("value"), str)
        }
        return frozenset(found), min(access.info.exp, time.time() + self.revocation_window)

    async def may_see_study(self, access: Access, study_uid: str) -> bool:
        """Whether the EHR's current decision for this token covers ``study_uid``."""
        restriction = self.study_restriction(access)
        if restriction is not None:
            return study_uid in restriction

        async def ask() -> tuple[bool, float]:
            found, expires_at = await self._ask_studies(access, [study_uid])
            if study_uid in found:
                return True, expires_at
            return False, time.time() + self.negative_ttl

        return await self.studies.get(f"{access.digest}:{study_uid}", ask)

    async def may_write_for(self, access: Access, patient_id: str) -> bool:
        """The EHR's decision whether this token may store instances with ``patient_id``, cached
        per (token, PatientID) as study decisions are; the EHR unreachable is a 503 refusal."""
        known = access.info.write.allows(patient_id)
        if known is not None:
            return known

        async def ask() -> tuple[bool, float]:
            try:
                body = await self.ehr.introspect(access.token, {WRITE_PATIENT: patient_id})
                allowed = parse_write_decision(body, patient_id)
            except MalformedIntrospection as exc:
                raise EhrUnavailable(f"unusable write decision: {exc}") from exc
            if allowed:
                return True, min(access.info.exp, time.time() + self.revocation_window)
            return False, time.time() + self.negative_ttl

        try:
            return await self.studies.get(f"{access.digest}:write:{patient_id}", ask)
        except EhrUnavailable as exc:
            raise unavailable(str(exc)) from exc

    def write_check(self, access: Access) -> Callable[[str], bool]:
        """:meth:`may_write_for` for a worker thread of the request (it waits for the event loop
        only when the EHR must be asked)."""

        def allowed(patient_id: str) -> bool:
            known = access.info.write.allows(patient_id)
            if known is not None:
                return known
            return anyio.from_thread.run(self.may_write_for, access, patient_id)

        return allowed

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


def clock_skew(info: TokenInfo, now: float) -> tuple[str, float] | None:
    """Which claim of an active token lies beyond the leeway from ``now``, and by how much.

    The EHR decides ``active`` by its own clock. An ``exp`` up to :data:`CLOCK_LEEWAY` in our past
    (its clock is behind) or an ``iat`` up to that far in our future (ahead) is ordinary skew and
    accepted; beyond it the clocks disagree too much to keep the token's lifetime promise.
    """
    if info.exp <= now - CLOCK_LEEWAY:
        return "exp", info.exp - now
    if info.iat is not None and info.iat > now + CLOCK_LEEWAY:
        return "iat", info.iat - now
    return None


def _capability_refused(reason: str) -> GateRefusal:
    return GateRefusal(
        JSONResponse({"error": "forbidden", "message": "the capability URL is not valid"}, 403), reason
    )


def _bearer(request: Request) -> str:
    """The token of the one ``Authorization: Bearer`` header (RFC 6750 §2.1 only, never §2.3)."""
    if request.scope.get("query_string") and "access_token" in request.query_params:
        raise GateRefusal(
            bearer_challenge("invalid_request", "send the token in the Authorization header, not the URL"),
            "token in query",
        )
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
