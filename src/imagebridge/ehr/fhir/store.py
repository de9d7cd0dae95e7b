"""FHIR resources as JSON documents with indexed search parameters (FHIR R4 §3.1 RESTful API).

The store knows nothing of authorization: callers (the REST layer, guided by the policy engine)
decide what may be read or written. Writes replace a document and its index rows in one
transaction, so a search never sees a half-written resource.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from sqlalchemy import Select, and_, case, delete, func, insert, literal, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from imagebridge.ehr.fhir.dates import date_range, now_instant
from imagebridge.ehr.fhir.search_params import params_for
from imagebridge.ehr.tables import resources, search_dates, search_tokens

Resource = dict[str, Any]
DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]


class ResourceConflict(Exception):
    """A write would break an invariant (e.g. move a study to another patient)."""


class MultipleMatches(Exception):
    """A conditional update's criteria match more than one resource (FHIR R4: 412)."""


@dataclass(frozen=True)
class TokenCriterion:
    """``param=[system|]code[,...]``: any of the alternatives matches (FHIR R4 §3.1.1.4.8)."""

    param: str
    alternatives: tuple[tuple[str | None, str], ...]


@dataclass(frozen=True)
class DateCriterion:
    """``param=<prefix><date>`` (FHIR R4 §3.1.1.4.3); ``_lastUpdated`` uses the document column."""

    param: str
    prefix: DatePrefix
    value: str


Criterion = TokenCriterion | DateCriterion


@dataclass
class Query:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = 50
    offset: int = 0
    sort: tuple[tuple[str, bool], ...] = ()  # (param, descending)


class Store:
    """CRUD and search over the ``resources`` table and its index tables."""

    def __init__(self, engine: AsyncEngine, connection: AsyncConnection | None = None) -> None:
        self.engine = engine
        self._connection = connection

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Store]:
        """This store with every read on one connection until the block ends (one request's
        policy data, search and includes: one pool checkout and reset instead of one per read).
        Writes still run in their own transactions."""
        async with self.engine.connect() as conn:
            yield Store(self.engine, conn)

    @asynccontextmanager
    async def _reader(self) -> AsyncIterator[AsyncConnection]:
        if self._connection is not None:
            yield self._connection
        else:
            async with self.engine.connect() as conn:
                yield conn

    async def read(self, resource_type: str, resource_id: str) -> Resource | None:
        async with self._reader() as conn:
            return await _current(conn, resource_type, resource_id)

    async def read_many(self, refs: Sequence[tuple[str, str]]) -> list[Resource]:
        if not refs:
            return []
        async with self._reader() as conn:
            rows = await conn.execute(
                select(resources.c.content).where(
                    or_(*(and_(resources.c.resource_type == t, resources.c.id == i) for t, i in refs))
                )
            )
            return [_load(r.content) for r in rows]

    async def create(self, resource: Resource) -> Resource:
        resource = dict(resource)
        resource["id"] = resource.get("id") or uuid.uuid4().hex
        async with self.engine.begin() as conn:
            return await self._write(conn, resource, version=1, new=True)

    async def create_many(self, created: Sequence[Resource], *, flush: bool = True) -> None:
        """Create several resources in one transaction (e.g. one request's AuditEvents), their
        documents and index rows each inserted by one statement for the whole batch.

        ``flush=False`` on PostgreSQL commits without waiting for the WAL flush
        (``synchronous_commit = off``, this transaction only): the commit is atomic and ordered,
        only an operating-system crash can lose the last fraction of a second of such writes.
        """
        if not created:
            return
        documents: list[dict[str, Any]] = []
        token_rows: list[dict[str, Any]] = []
        date_rows: list[dict[str, Any]] = []
        for resource in created:
            stored = _versioned({**resource, "id": resource.get("id") or uuid.uuid4().hex}, 1)
            documents.append(_document_row(stored))
            _index_rows(stored, token_rows, date_rows)
        async with self.engine.begin() as conn:
            if not flush and conn.dialect.name == "postgresql":
                await conn.execute(text("SET LOCAL synchronous_commit TO OFF"))
            await conn.execute(insert(resources), documents)
            await _insert_index(conn, token_rows, date_rows)

    async def put(self, resource: Resource) -> tuple[Resource, bool]:
        """Create or replace ``resource`` by id; returns (stored, created)."""
        async with self.engine.begin() as conn:
            existing = await _current(conn, resource["resourceType"], resource["id"])
            return await self._upsert(conn, existing, resource)

    async def conditional_put(
        self, query: Query, build: Callable[[Resource | None], Resource]
    ) -> tuple[Resource, bool]:
        """Conditional update (FHIR R4 §3.1.0.4.3) as one atomic step: the match and the write run
        in one transaction holding a lock on the criteria, so concurrent updates with the same
        criteria never both create. ``build`` turns the match (or None) into what to write and may
        raise to refuse; returning the match itself leaves it unchanged (conditional create, FHIR R4
        §3.1.0.8). Returns (stored, created)."""
        async with self.engine.begin() as conn:
            await _serialize(conn, f"{query.resource_type}?{query.criteria!r}")
            rows = await conn.execute(self._select(query, None, limit=2))
            matches = [_load(r.content) for r in rows]
            if len(matches) > 1:
                raise MultipleMatches("the criteria match more than one resource")
            existing = matches[0] if matches else None
            resource = build(existing)
            if existing is not None and resource is existing:
                return existing, False
            return await self._upsert(conn, existing, resource)

    async def _upsert(
        self, conn: AsyncConnection, existing: Resource | None, resource: Resource
    ) -> tuple[Resource, bool]:
        if existing is None:
            return await self._write(conn, resource, version=1, new=True), True
        _guard_subject(existing, resource)
        version = int(existing.get("meta", {}).get("versionId", "1")) + 1
        return await self._write(conn, resource, version=version, new=False), False

    async def _write(self, conn: AsyncConnection, resource: Resource, *, version: int, new: bool) -> Resource:
        resource = _versioned(resource, version)
        rtype, rid = resource["resourceType"], resource["id"]
        row = _document_row(resource)
        if new:
            await conn.execute(insert(resources).values(**row))
        else:
            await conn.execute(
                update(resources)
                .where(resources.c.resource_type == rtype, resources.c.id == rid)
                .values(version=version, last_updated=row["last_updated"], content=row["content"])
            )
            await conn.execute(
                delete(search_tokens).where(search_tokens.c.resource_type == rtype, search_tokens.c.id == rid)
            )
            await conn.execute(
                delete(search_dates).where(search_dates.c.resource_type == rtype, search_dates.c.id == rid)
            )
        token_rows: list[dict[str, Any]] = []
        date_rows: list[dict[str, Any]] = []
        _index_rows(resource, token_rows, date_rows)
        await _insert_index(conn, token_rows, date_rows)
        return resource

    async def search(
        self, query: Query, *, restrict: ColumnElement[bool] | None = None
    ) -> tuple[list[Resource], int]:
        """Resources matching every criterion, a page of them, and the total count."""
        page, total, _ = await self.search_within(query, restrict=restrict)
        return page, total

    async def search_within(
        self,
        query: Query,
        *,
        restrict: ColumnElement[bool] | None = None,
        reached: ColumnElement[bool] | None = None,
    ) -> tuple[list[Resource], int, int]:
        """:meth:`search`, and how many resources match within ``reached`` (a superset of
        ``restrict``, e.g. before labels hide some) counted in the same pass (0 without it)."""
        async with self._reader() as conn:
            rows = (await conn.execute(self._counted_page(query, restrict, reached))).all()
            if rows:
                return [_load(r.content) for r in rows], int(rows[0].total), int(rows[0].within or 0)
            if reached is None:  # an empty page (nothing matches, or past the end): count apart
                total = await conn.scalar(
                    select(func.count()).select_from(resources).where(*_where(query, restrict))
                )
                within = 0
            else:
                admitted = func.count(case((true() if restrict is None else restrict, 1)))
                counts = select(admitted, func.count()).select_from(resources).where(*_where(query, reached))
                total, within = (await conn.execute(counts)).one()
            return [], int(total or 0), int(within or 0)

    async def find(self, query: Query) -> list[Resource]:
        """The first ``query.count`` matches of ``query``, without counting them all (for internal
        lookups that need the resources, not a Bundle total)."""
        async with self._reader() as conn:
            rows = await conn.execute(self._select(query, None, limit=query.count))
            return [_load(r.content) for r in rows]

    async def count(self, query: Query, restrict: ColumnElement[bool] | None = None) -> int:
        """How many resources match ``query`` within ``restrict``."""
        async with self._reader() as conn:
            found = await conn.scalar(
                select(func.count()).select_from(resources).where(*_where(query, restrict))
            )
        return int(found or 0)

    async def labeled(self, patient: str, labels: Sequence[tuple[str, str]]) -> set[str]:
        """References of the resources of ``patient`` carrying any of ``labels`` in ``meta.security``."""
        if not labels:
            return set()
        labeled, owner = search_tokens.alias(), search_tokens.alias()
        statement = (
            select(labeled.c.resource_type, labeled.c.id)
            .join(owner, and_(owner.c.resource_type == labeled.c.resource_type, owner.c.id == labeled.c.id))
            .where(
                labeled.c.param == "_security",
                or_(*(and_(labeled.c.system == system, labeled.c.code == code) for system, code in labels)),
                owner.c.param == "patient",
                owner.c.code == f"Patient/{patient}",
                labeled.c.resource_type != "AuditEvent",
            )
        )
        async with self._reader() as conn:
            return {f"{row[0]}/{row[1]}" for row in await conn.execute(statement)}

    def _select(self, query: Query, restrict: ColumnElement[bool] | None, *, limit: int) -> Select[Any]:
        """The page of ``query``'s matches, in its sort order (then by id, so pages are stable)."""
        return (
            select(resources.c.content)
            .where(*_where(query, restrict))
            .order_by(*_order(query))
            .limit(limit)
            .offset(query.offset)
        )

    def _counted_page(
        self, query: Query, restrict: ColumnElement[bool] | None, reached: ColumnElement[bool] | None
    ) -> Select[Any]:
        """One statement for a search's page and its counts: each row of the page carries the
        number of matches within ``restrict`` (``total``) and within ``reached`` (``within``, 0
        without it). The counts are computed over ids alone (an index), the documents read for
        the page's rows only; an empty page carries no counts."""
        order, criteria = _order(query), _where(query, None)  # built once, used twice
        within: ColumnElement[Any] = literal(0)
        if reached is not None:  # its own scan of resources, not correlated with the page's
            reached_rows = select(func.count()).select_from(resources).where(*criteria, reached)
            within = reached_rows.correlate(None).scalar_subquery()
        page = (
            select(
                resources.c.id,
                func.count().over().label("total"),
                func.row_number().over(order_by=order).label("position"),
            )
            .where(*criteria, *([] if restrict is None else [restrict]))
            .order_by(*order)
            .limit(query.count)
            .offset(query.offset)
            .subquery()
        )
        document = resources.alias()
        return (
            select(document.c.content, page.c.total, within.label("within"))
            .join_from(
                page,
                document,
                and_(document.c.resource_type == query.resource_type, document.c.id == page.c.id),
            )
            .order_by(page.c.position)
        )


def _versioned(resource: Resource, version: int) -> Resource:
    """``resource`` as stored: ``meta.versionId`` and ``meta.lastUpdated`` set now."""
    meta = dict(resource.get("meta", {}))
    meta.update(versionId=str(version), lastUpdated=now_instant())
    return {**resource, "meta": meta}


def _document_row(resource: Resource) -> dict[str, Any]:
    """The ``resources`` row of a versioned resource."""
    return {
        "resource_type": resource["resourceType"],
        "id": resource["id"],
        "version": int(resource["meta"]["versionId"]),
        "last_updated": resource["meta"]["lastUpdated"],
        "content": orjson.dumps(resource).decode(),
    }


def _index_rows(
    resource: Resource, token_rows: list[dict[str, Any]], date_rows: list[dict[str, Any]]
) -> None:
    """Append the search index rows of ``resource`` (FHIR R4 §3.1.1: one per indexed value)."""
    rtype, rid = resource["resourceType"], resource["id"]
    for param in params_for(rtype).values():
        for value in param.extract(resource):
            row = {"resource_type": rtype, "id": rid, "param": param.name}
            if param.kind == "date":
                date_rows.append({**row, "low": value[0], "high": value[1]})
            else:
                token_rows.append({**row, "system": value[0], "code": value[1]})


async def _insert_index(
    conn: AsyncConnection, token_rows: list[dict[str, Any]], date_rows: list[dict[str, Any]]
) -> None:
    if token_rows:
        await conn.execute(insert(search_tokens), token_rows)
    if date_rows:
        await conn.execute(insert(search_dates), date_rows)


def _order(query: Query) -> list[Any]:
    """ORDER BY of ``query``: its ``_sort`` keys, then the id (so pages are stable)."""
    keys = [
        (resources.c.last_updated.desc() if desc else resources.c.last_updated)
        if param == "_lastUpdated"
        else (
            _date_sort(query.resource_type, param).desc() if desc else _date_sort(query.resource_type, param)
        )
        for param, desc in query.sort
    ]
    return [*keys, resources.c.id]


def _where(query: Query, restrict: ColumnElement[bool] | None) -> list[ColumnElement[bool]]:
    where = [
        resources.c.resource_type == query.resource_type,
        *(clause(c, query.resource_type) for c in query.criteria),
    ]
    if restrict is not None:
        where.append(restrict)
    return where


async def _serialize(conn: AsyncConnection, key: str) -> None:
    """Hold, until the transaction ends, a lock that every transaction serializing on ``key`` waits for.

    PostgreSQL: a transaction-scoped advisory lock on the key's hash. SQLite: a write statement
    (that changes nothing) takes the database's write lock before anything is read, so the
    transaction reads the latest committed state and no other writer interleaves.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(key))))
    else:
        await conn.execute(
            update(resources).where(resources.c.resource_type == "").values(version=resources.c.version)
        )


def clause(criterion: Criterion, resource_type: str) -> ColumnElement[bool]:
    """SQL for one search criterion over the ``resources`` table."""
    if isinstance(criterion, TokenCriterion):
        return has_token(criterion.param, criterion.alternatives, resource_type)
    if criterion.param == "_lastUpdated":
        low, high = resources.c.last_updated, resources.c.last_updated
    else:
        low, high = search_dates.c.low, search_dates.c.high
    lo, hi = date_range(criterion.value)
    cond = _date_condition(criterion.prefix, low, high, lo, hi)
    if criterion.param == "_lastUpdated":
        return cond
    return resources.c.id.in_(
        select(search_dates.c.id).where(
            search_dates.c.resource_type == resource_type,
            search_dates.c.param == criterion.param,
            cond,
        )
    )


def has_token(
    param: str, alternatives: Sequence[tuple[str | None, str]], resource_type: str
) -> ColumnElement[bool]:
    """SQL: the resource has an index row for ``param`` matching any ``(system, code)``.

    The subquery names ``resource_type`` as a constant (not correlated with the outer row), so the
    database evaluates it once and uses the ``ix_search_tokens_lookup`` index.
    """
    return resources.c.id.in_(
        select(search_tokens.c.id).where(
            search_tokens.c.resource_type == resource_type,
            search_tokens.c.param == param,
            token_matches(alternatives),
        )
    )


def token_matches(alternatives: Sequence[tuple[str | None, str]]) -> ColumnElement[bool]:
    """SQL: a ``search_tokens`` row's ``(system, code)`` is one of ``alternatives`` (system None:
    any system). Codes are grouped by system into ``IN`` lists: one ``OR`` branch per code would
    exceed SQLite's expression depth (1,000) for a Group of more than about a thousand patients,
    and costs a request a millisecond of expression building for a handful of security labels."""
    by_system: dict[str | None, list[str]] = {}
    for system, code in alternatives:
        by_system.setdefault(system, []).append(code)
    return or_(
        *(
            search_tokens.c.code.in_(codes)
            if system is None
            else and_(search_tokens.c.system == system, search_tokens.c.code.in_(codes))
            for system, codes in by_system.items()
        )
    )


def _date_condition(prefix: str, low: Any, high: Any, lo: str, hi: str) -> ColumnElement[bool]:
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": and_(low >= lo, high <= hi),
        "ne": or_(low < lo, high > hi),
        "gt": high > hi,
        "lt": low < lo,
        "ge": high >= lo,
        "le": low <= hi,
        "sa": low > hi,
        "eb": high < lo,
        "ap": and_(low <= hi, high >= lo),
    }
    return conditions[prefix]


def _date_sort(resource_type: str, param: str) -> Any:
    return (
        select(func.min(search_dates.c.low))
        .where(
            search_dates.c.resource_type == resource_type,
            search_dates.c.id == resources.c.id,
            search_dates.c.param == param,
        )
        .scalar_subquery()
    )


async def _current(conn: AsyncConnection, resource_type: str, resource_id: str) -> Resource | None:
    row = (
        await conn.execute(
            select(resources.c.content).where(
                resources.c.resource_type == resource_type, resources.c.id == resource_id
            )
        )
    ).first()
    return None if row is None else _load(row.content)


def _guard_subject(existing: Resource, new: Resource) -> None:
    """An update may never move a resource from one patient to another."""
    old_subject = existing.get("subject", {}).get("reference")
    new_subject = new.get("subject", {}).get("reference")
    if old_subject and new_subject and old_subject != new_subject:
        raise ResourceConflict(f"{existing['resourceType']}/{existing['id']} belongs to another patient")


def _load(content: str) -> Resource:
    data: Resource = orjson.loads(content)
    return data
