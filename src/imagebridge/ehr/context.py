"""Everything one EHR process shares between requests."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.common.settings import EhrSettings
from imagebridge.common.sliding_window import Limiter
from imagebridge.ehr.fhir.store import Store
from imagebridge.ehr.policy.engine import PolicyEngine
from imagebridge.ehr.smart.clients import ClientRegistry
from imagebridge.ehr.smart.grants import GrantStore
from imagebridge.ehr.smart.jwks_fetch import JwksFetcher
from imagebridge.ehr.smart.keys import SigningKeys
from imagebridge.ehr.smart.memo import Memo
from imagebridge.ehr.smart.replay import DatabaseReplayStore


@dataclass
class EhrContext:
    settings: EhrSettings
    engine: AsyncEngine
    store: Store
    clients: ClientRegistry
    grants: GrantStore
    keys: SigningKeys
    replay: DatabaseReplayStore
    jwks: JwksFetcher
    policy: PolicyEngine
    http: httpx.AsyncClient
    #: Dynamic registrations per client IP address (``registration_rate_limit`` per window).
    registrations: Limiter
    #: Token lookups and imaging grants this worker remembers for introspection.
    memo: Memo = field(default_factory=Memo)

    @property
    def token_endpoint(self) -> str:
        return f"{self.settings.origin}/auth/token"

    @property
    def audiences(self) -> list[str]:
        """Resource servers an access token is valid at: this FHIR base and each imaging system."""
        return [self.settings.fhir_base, *self.settings.imaging_bases]
