"""QIDO-RS: search for studies, series and instances (PS3.18 §10.6).

Matching runs in SQL over indexed columns (:mod:`.qido_query`, :mod:`.qido_match`). Results
pass the gate before paging (ARCHITECTURE.md invariant 2): a patient-context token's permitted
studies restrict the SQL itself; other tokens have candidate rows decided in batches by the EHR
(:meth:`Gate.visible_studies`), so ``limit``/``offset`` count only what the token may see and no
row, count or modality of another patient's study is ever returned. Gate decisions are per
study, so the counts and ModalitiesInStudy of a visible study describe only visible data.

Each result carries the required attributes of its level (Tables 10.6.3-3/4/5, present even
when empty), the attributes matched on, and those named by ``includefield`` (``all``: every
attribute the index holds at that level). A truncated result says so in a ``Warning: 299``
header (PS3.18 §8.3.4.4 / §10.6.3.2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, func, select
from starlette.requests import Request
from starlette.responses import Response

from imagebridge.imaging.context import ImagingContext
from imagebridge.imaging.dicomweb.errors import DicomwebError, not_found
from imagebridge.imaging.dicomweb.json_body import json_response, negotiate_json
from imagebridge.imaging.dicomweb.metadata import absolute_bulkdata_uris, instance_object
from imagebridge.imaging.dicomweb.qido_query import LEVELS, Level, Query, parse
from imagebridge.imaging.dicomweb.uids import is_valid_uid
from imagebridge.imaging.gate.gate import Access
from imagebridge.imaging.tables import instances, series, studies

#: Required return attributes and their VRs (Tables 10.6.3-3, -4, -5), sent empty when unknown.
REQUIRED: dict[Level, dict[str, str]] = {
    "study": {
        "00080020": "DA",  # StudyDate
        "00080030": "TM",  # StudyTime
        "00080050": "SH",  # AccessionNumber
        "00080090": "PN",  # ReferringPhysicianName
        "00100010": "PN",  # PatientName
        "00100020": "LO",  # PatientID
        "00100030": "DA",  # PatientBirthDate
        "00100040": "CS",  # PatientSex
        "0020000D": "UI",  # StudyInstanceUID
        "00200010": "SH",  # StudyID
    },
    "series": {
        "00080060": "CS",  # Modality
        "0008103E": "LO",  # SeriesDescription
        "0020000E": "UI",  # SeriesInstanceUID
        "00200011": "IS",  # SeriesNumber
        "00400244": "DA",  # PerformedProcedureStepStartDate
        "00400245": "TM",  # PerformedProcedureStepStartTime
    },
    "instance": {
        "00080016": "UI",  # SOPClassUID
        "00080018": "UI",  # SOPInstanceUID
        "00200013": "IS",  # InstanceNumber
    },
}
#: Conditional attributes returned when present (Timezone Offset From UTC; Request Attributes).
CONDITIONAL = {"study": {"00080201"}, "series": {"00080201", "00400275"}, "instance": {"00080201"}}
TRUNCATED_WARNING = (
    '299 imagebridge: "The number of results exceeded the limit; '
    'additional results can be requested with offset"'
)
LIMIT_WARNING = '299 imagebridge: "The limit was reduced to the maximum this server returns"'
_CANDIDATE_CHUNK = 500


@dataclass(frozen=True)
class Scope:
    """Where a search runs: everywhere, within a study, or within a series of a study."""

    study: str | None = None
    series: str | None = None


async def search(ctx: ImagingContext, access: Access, request: Request, level: Level) -> Response:
    """Answer one QIDO-RS request for results at ``level`` within the URL's study/series."""
    media_type = negotiate_json(request)
    scope = _scope(request)
    allowed = LEVELS[: LEVELS.index(level) + 1]
    query = parse(request.url.query, level, allowed_levels=allowed)
    if scope.study is not None and not (
        await _scope_exists(ctx, scope) and await ctx.gate.may_see_study(access, scope.study)
    ):
        return not_found()
    rows, truncated = await _page(ctx, access, query, scope)
    results = await _results(ctx, query, scope, rows)
    warnings = ([TRUNCATED_WARNING] if truncated else []) + ([LIMIT_WARNING] if query.limit_reduced else [])
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    body = b"[" + b",".join(results) + b"]"
    return await json_response(request, body, media_type, headers=headers)


def _scope(request: Request) -> Scope:
    params = request.path_params
    study, series_uid = params.get("study"), params.get("series")
    for value in (study, series_uid):
        if value is not None and not is_valid_uid(value):
            raise DicomwebError(400, "a UID in the URL is not a valid DICOM UID")
    return Scope(study, series_uid)


async def _scope_exists(ctx: ImagingContext, scope: Scope) -> bool:
    if scope.series is not None:
        probe = select(series.c.series_uid).where(
            series.c.series_uid == scope.series, series.c.study_uid == scope.study
        )
    else:
        probe = select(studies.c.study_uid).where(studies.c.study_uid == scope.study)
    async with ctx.engine.connect() as conn:
        return (await conn.execute(probe)).first() is not None


def _statement(query: Query, scope: Scope) -> Select[Any]:
    """The SQL of ``query``: matching conditions, the URL's scope, and a stable order."""
    order_study = (studies.c.study_date.desc(), studies.c.study_time.desc(), studies.c.study_uid.desc())
    if query.level == "study":
        stmt = select(studies.c.study_uid, studies.c.study_json).order_by(*order_study)
    elif query.level == "series":
        stmt = (
            select(series.c.study_uid, series.c.series_uid, series.c.series_json, studies.c.study_json)
            .join(studies, studies.c.study_uid == series.c.study_uid)
            .order_by(*order_study, series.c.series_number, series.c.series_uid)
        )
    else:
        stmt = (
            select(
                instances.c.study_uid,
                instances.c.series_uid,
                instances.c.sop_uid,
                instances.c.sop_class_uid,
                instances.c.instance_number,
                instances.c.rows,
                instances.c.columns,
                instances.c.bits_allocated,
                instances.c.number_of_frames,
                series.c.series_json,
                studies.c.study_json,
            )
            .join(series, series.c.series_uid == instances.c.series_uid)
            .join(studies, studies.c.study_uid == instances.c.study_uid)
            .order_by(
                *order_study,
                series.c.series_number,
                series.c.series_uid,
                instances.c.instance_number,
                instances.c.sop_uid,
            )
        )
        if query.include_all or query.include_tags:
            stmt = stmt.add_columns(instances.c.metadata_json)
    if scope.study is not None:
        stmt = stmt.where(studies.c.study_uid == scope.study)
    if scope.series is not None:
        stmt = stmt.where(series.c.series_uid == scope.series)
    return stmt.where(*query.conditions())


async def _page(
    ctx: ImagingContext, access: Access, query: Query, scope: Scope
) -> tuple[Sequence[Any], bool]:
    """The visible rows of the requested page, and whether more visible rows follow."""
    stmt = _statement(query, scope)
    wanted = query.offset + query.limit
    restriction = ctx.gate.study_restriction(access)
    async with ctx.engine.connect() as conn:
        if scope.study is not None or restriction is not None:
            # the URL's study was already decided, or the token's studies restrict the SQL itself
            if restriction is not None and scope.study is None:
                stmt = stmt.where(studies.c.study_uid.in_(sorted(restriction)))
            rows = (await conn.execute(stmt.offset(query.offset).limit(query.limit + 1))).all()
            return rows[: query.limit], len(rows) > query.limit
        visible: list[Any] = []
        position = 0
        size = min(wanted + 1, _CANDIDATE_CHUNK)  # one chunk when the token sees most candidates
        while len(visible) <= wanted:
            chunk = (await conn.execute(stmt.offset(position).limit(size))).all()
            position += len(chunk)
            allowed = await ctx.gate.visible_studies(access, [r.study_uid for r in chunk])
            visible.extend(r for r in chunk if r.study_uid in allowed)
            if len(chunk) < size:
                break
            size = _CANDIDATE_CHUNK
    return visible[query.offset : wanted], len(visible) > wanted


async def _results(ctx: ImagingContext, query: Query, scope: Scope, rows: Sequence[Any]) -> list[bytes]:
    base = ctx.settings.dicomweb_base
    if not rows:
        return []
    if query.level == "study":
        counts = await _study_counts(ctx, [r.study_uid for r in rows])
        return [_study_result(query, r, counts.get(r.study_uid, ([], 0, 0)), base) for r in rows]
    if query.level == "series":
        numbers = await _series_counts(ctx, [r.series_uid for r in rows])
        return [_series_result(query, scope, r, numbers.get(r.series_uid, 0), base) for r in rows]
    return [_instance_result(query, scope, r, base) for r in rows]


async def _study_counts(ctx: ImagingContext, uids: list[str]) -> dict[str, tuple[list[str], int, int]]:
    """ModalitiesInStudy, NumberOfStudyRelatedSeries and -Instances of the page's studies (one query)."""
    modalities: dict[str, list[str]] = {u: [] for u in uids}
    series_count: dict[str, int] = dict.fromkeys(uids, 0)
    instance_count: dict[str, int] = dict.fromkeys(uids, 0)
    per_series = (
        select(instances.c.series_uid, func.count().label("n"))
        .where(instances.c.study_uid.in_(uids))
        .group_by(instances.c.series_uid)
        .subquery()
    )
    grouped = (
        select(
            series.c.study_uid, series.c.modality, func.count(), func.coalesce(func.sum(per_series.c.n), 0)
        )
        .outerjoin(per_series, per_series.c.series_uid == series.c.series_uid)
        .where(series.c.study_uid.in_(uids))
        .group_by(series.c.study_uid, series.c.modality)
    )
    async with ctx.engine.connect() as conn:
        for study_uid, modality, number_of_series, number_of_instances in await conn.execute(grouped):
            if modality:
                modalities[study_uid].append(modality)
            series_count[study_uid] += number_of_series
            instance_count[study_uid] += int(number_of_instances)
    return {u: (sorted(modalities[u]), series_count[u], instance_count[u]) for u in uids}


async def _series_counts(ctx: ImagingContext, uids: list[str]) -> dict[str, int]:
    async with ctx.engine.connect() as conn:
        result = await conn.execute(
            select(instances.c.series_uid, func.count())
            .where(instances.c.series_uid.in_(sorted(set(uids))))
            .group_by(instances.c.series_uid)
        )
        return {series_uid: count for series_uid, count in result}


def _wanted(query: Query, level: Level) -> set[str]:
    wanted = query.returned.get(level)
    if wanted is None:
        wanted = set(REQUIRED[level]) | CONDITIONAL[level] | query.matched_tags | query.include_tags
        query.returned[level] = wanted
    return wanted


def _pick(target: dict[str, Any], source: dict[str, Any], tags: set[str], *, everything: bool) -> None:
    for tag, attribute in source.items():
        if everything or tag in tags:
            target[tag] = attribute


def _fill_required(target: dict[str, Any], level: Level) -> None:
    for tag, vr in REQUIRED[level].items():
        target.setdefault(tag, {"vr": vr})


def _study_part(query: Query, study_json: bytes, *, everything: bool) -> dict[str, Any]:
    result: dict[str, Any] = {}
    _pick(result, orjson.loads(study_json), _wanted(query, "study"), everything=everything)
    _fill_required(result, "study")
    return result


def _study_result(query: Query, row: Any, counts: tuple[list[str], int, int], base: str) -> bytes:
    result = _study_part(query, row.study_json, everything=query.include_all)
    modalities, number_of_series, number_of_instances = counts
    result["00080061"] = {"vr": "CS", "Value": modalities} if modalities else {"vr": "CS"}
    result["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{row.study_uid}"]}
    result["00201206"] = {"vr": "IS", "Value": [number_of_series]}
    result["00201208"] = {"vr": "IS", "Value": [number_of_instances]}
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS)


def _series_result(query: Query, scope: Scope, row: Any, count: int, base: str) -> bytes:
    # "If the Target Resource is All Series, then include all Study Level Attributes"
    result = _study_part(query, row.study_json, everything=True) if scope.study is None else {}
    _pick(result, orjson.loads(row.series_json), _wanted(query, "series"), everything=query.include_all)
    _fill_required(result, "series")
    result["0020000D"] = {"vr": "UI", "Value": [row.study_uid]}
    result["00081190"] = {
        "vr": "UR",
        "Value": [f"{base}/studies/{row.study_uid}/series/{row.series_uid}"],
    }
    result["00201209"] = {"vr": "IS", "Value": [count]}
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS)


def _instance_result(query: Query, scope: Scope, row: Any, base: str) -> bytes:
    result: dict[str, Any] = {}
    if scope.study is None:
        result = _study_part(query, row.study_json, everything=True)
    if scope.series is None:
        # all instances of a study, or all instances: include the Series Level Attributes too
        _pick(result, orjson.loads(row.series_json), _wanted(query, "series"), everything=True)
    if query.include_all or query.include_tags:
        instance = absolute_bulkdata_uris(orjson.loads(instance_object(row.metadata_json)), base)
        _pick(result, instance, _wanted(query, "instance"), everything=query.include_all)
    result.update(
        {
            "00080016": {"vr": "UI", "Value": [row.sop_class_uid]},
            "00080018": {"vr": "UI", "Value": [row.sop_uid]},
            "0020000D": {"vr": "UI", "Value": [row.study_uid]},
            "0020000E": {"vr": "UI", "Value": [row.series_uid]},
            "00081190": {
                "vr": "UR",
                "Value": [f"{base}/studies/{row.study_uid}/series/{row.series_uid}/instances/{row.sop_uid}"],
            },
        }
    )
    for tag, vr, value in (
        ("00200013", "IS", row.instance_number),
        ("00280010", "US", row.rows),
        ("00280011", "US", row.columns),
        ("00280100", "US", row.bits_allocated),
        ("00280008", "IS", row.number_of_frames),
    ):
        if value is not None:
            result[tag] = {"vr": vr, "Value": [value]}
    _fill_required(result, "instance")
    return orjson.dumps(result, option=orjson.OPT_SORT_KEYS)


def handler(level: Level) -> Callable[[ImagingContext, Access, Request], Awaitable[Response]]:
    """The route handler searching at ``level`` (wrap it with ``routes.gated``)."""

    async def search_level(ctx: ImagingContext, access: Access, request: Request) -> Response:
        return await search(ctx, access, request, level)

    return search_level
