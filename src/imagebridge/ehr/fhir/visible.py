"""What one search shows one authorization (FHIR R4 §3.1.1; ARCHITECTURE.md "Policy").

Two ways to one answer. In general the policy filters in SQL (:meth:`PolicyView.sql`), so pages
and totals are exact at any size, and :meth:`PolicyView.decide` checks every row again.

A search by a list of identifiers (``ImagingStudy?identifier=urn:oid:<uid1>,<uid2>,…``, how an
imaging system asks which studies a token may see: ARCHITECTURE.md criterion f, channel 1) matches
few rows. They are read through the identifier index alone and decided in memory. Joined with the
policy's patient list in one query, the database may start from the wrong end: PostgreSQL without
fresh statistics (after a bulk load, or with autovacuum off) walked every study of a 100-patient
Group (10,000 index rows, ~200 ms a query) instead of the 50 identifiers (~1 ms).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from imagebridge.common.smart_scopes import Scope
from imagebridge.ehr.fhir.store import Query, Store, TokenCriterion
from imagebridge.ehr.policy.engine import PolicyView

#: Matches of an identifier search decided in memory; a search matching more takes the SQL way.
IDENTIFIER_MATCHES: Final = 1000
log = logging.getLogger(__name__)
Resource = dict[str, Any]


@dataclass
class Visible:
    """A page of what the authorization may see, the exact total and, when asked for, how many
    matches labels or Consents hid (for the audit record, security.md AU-09)."""

    page: list[Resource]
    total: int
    hidden: int = 0


async def visible(
    store: Store, view: PolicyView, scopes: Sequence[Scope], query: Query, *, count_hidden: bool = False
) -> Visible:
    """The page of ``query`` that ``view`` shows under ``scopes``, read from ``store``."""
    if any(isinstance(c, TokenCriterion) and c.param == "identifier" for c in query.criteria):
        matches = await store.find(replace(query, count=IDENTIFIER_MATCHES + 1, offset=0))
        if len(matches) <= IDENTIFIER_MATCHES:
            return _decided(view, scopes, query, matches, count_hidden)
    restrict = view.sql(query.resource_type, scopes)
    reached = view.sql(query.resource_type, scopes, hiding=False) if count_hidden else None
    results, total, within = await store.search_within(query, restrict=restrict, reached=reached)
    page = [r for r in results if view.decide(r, scopes).allowed]
    if len(page) != len(results):  # the SQL twin must never admit more than decide()
        log.error("policy SQL admitted %d resources decide() refused", len(results) - len(page))
    return Visible(page, total - (len(results) - len(page)), within - total if count_hidden else 0)


def _decided(
    view: PolicyView, scopes: Sequence[Scope], query: Query, matches: list[Resource], count_hidden: bool
) -> Visible:
    """Every match decided in memory, then paged (same order as the SQL way)."""
    allowed = [r for r in matches if view.decide(r, scopes).allowed]
    hidden = 0
    if count_hidden:
        hidden = sum(1 for r in matches if view.decide(r, scopes, hiding=False).allowed) - len(allowed)
    return Visible(allowed[query.offset : query.offset + query.count], len(allowed), hidden)
