"""Proxy mode publishing: find the upstream's studies and publish them to the EHR (docs/proxy.md).

The upstream keeps the archive; the EHR must still know each study and its patient before the
gate can let anyone see it (publish first, then the EHR decides). A scan asks the upstream with
QIDO-RS for studies whose ``StudyDate`` is on or after the latest date seen by the previous scan
(all studies on the first run), queues them in ``publish_queue``, and the ordinary
:class:`~imagebridge.imaging.publish.Publisher` upserts each as an ImagingStudy built from
QIDO-RS series and instance results (:class:`UpstreamSummaries`). Upserts are conditional
updates by Study Instance UID, so scanning a study again is harmless.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from imagebridge.imaging.gate.ehr_client import EhrUnavailable
from imagebridge.imaging.publish import Publisher, queue_study
from imagebridge.imaging.upstream.client import UpstreamClient, UpstreamError, first_value

log = logging.getLogger(__name__)

PAGE = 500
_STUDY_FIELDS = ("00080020", "00080030", "00080050", "00100020", "00081030")


async def enqueue(engine: AsyncEngine, study_uids: Iterable[str]) -> None:
    """Queue studies for publishing (again, if already queued)."""
    now = time.time()
    async with engine.begin() as conn:
        for uid in study_uids:
            await queue_study(conn, uid, now)


def _text(item: dict[str, Any], tag: str) -> str:
    value = first_value(item, tag)
    if isinstance(value, dict):  # PN: {"Alphabetic": …}
        value = value.get("Alphabetic", "")
    return "" if value is None else str(value)


def _number(item: dict[str, Any], tag: str) -> int | None:
    value = first_value(item, tag)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


async def _all(upstream: UpstreamClient, path: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    while True:
        page = await upstream.search(path, [*params, ("limit", str(PAGE)), ("offset", str(len(results)))])
        results += page
        if len(page) < PAGE:
            return results


class UpstreamSummaries:
    """Study summaries for :class:`~imagebridge.imaging.publish.Publisher`, from upstream QIDO-RS."""

    def __init__(self, upstream: UpstreamClient) -> None:
        self.upstream = upstream

    async def study_summary(self, study_uid: str) -> dict[str, Any] | None:
        try:
            found = await self.upstream.search(
                "/studies",
                [("StudyInstanceUID", study_uid), *(("includefield", t) for t in _STUDY_FIELDS)],
            )
            if not found:
                return None
            series = await _all(self.upstream, f"/studies/{study_uid}/series", [("includefield", "0008103E")])
            instances = await _all(
                self.upstream,
                f"/studies/{study_uid}/instances",
                [("includefield", "0020000E"), ("includefield", "00200013")],
            )
        except UpstreamError as exc:
            # the publisher retries on EhrUnavailable: an unreachable upstream is just as transient
            raise EhrUnavailable(str(exc)) from exc
        study = found[0]
        return {
            "study": {
                "study_uid": study_uid,
                "accession_number": _text(study, "00080050"),
                "patient_id": _text(study, "00100020"),
                "study_date": _text(study, "00080020"),
                "study_time": _text(study, "00080030"),
                "study_description": _text(study, "00081030"),
            },
            "series": sorted(
                (
                    {
                        "series_uid": _text(s, "0020000E"),
                        "modality": _text(s, "00080060"),
                        "series_number": _number(s, "00200011"),
                        "series_description": _text(s, "0008103E"),
                    }
                    for s in series
                ),
                key=lambda s: (s["series_number"] is None, s["series_number"] or 0, s["series_uid"]),
            ),
            "instances": sorted(
                (
                    {
                        "series_uid": _text(i, "0020000E"),
                        "sop_uid": _text(i, "00080018"),
                        "sop_class_uid": _text(i, "00080016"),
                        "instance_number": _number(i, "00200013"),
                    }
                    for i in instances
                ),
                key=lambda i: (i["instance_number"] is None, i["instance_number"] or 0, i["sop_uid"]),
            ),
        }


class Scanner:
    """Finds studies at the upstream to publish; remembers the latest StudyDate seen in a file."""

    def __init__(self, upstream: UpstreamClient, engine: AsyncEngine, state_file: Path) -> None:
        self.upstream = upstream
        self.engine = engine
        self.state_file = state_file

    def _since(self) -> str:
        try:
            value = json.loads(self.state_file.read_text()).get("last_study_date", "")
        except (OSError, ValueError):
            return ""
        return value if isinstance(value, str) and len(value) == 8 and value.isdigit() else ""

    async def scan(self, *, everything: bool = False) -> int:
        """Queue the studies dated on or after the last scan's latest date (all: ``everything``)."""
        since = "" if everything else self._since()
        params = [("includefield", "00080020")] + ([("StudyDate", f"{since}-")] if since else [])
        studies = await _all(self.upstream, "/studies", params)
        uids = [u for u in (first_value(s, "0020000D") for s in studies) if isinstance(u, str)]
        await enqueue(self.engine, uids)
        dates = [d for d in (_text(s, "00080020") for s in studies) if len(d) == 8 and d.isdigit()]
        latest = max([since, *dates])
        if latest:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            self.state_file.write_text(json.dumps({"last_study_date": latest}))
        return len(uids)

    async def run(self, interval: float, wakeup: asyncio.Event) -> None:
        """Scan forever every ``interval`` seconds (the app's background task)."""
        while True:
            try:
                if await self.scan():
                    wakeup.set()
            except UpstreamError as exc:
                log.warning("upstream scan deferred: %s", exc)
            await asyncio.sleep(interval)


async def sync_once(scanner: Scanner, publisher: Publisher, *, everything: bool) -> tuple[int, int]:
    """One scan and one publishing pass: (studies found, studies still queued)."""
    found = await scanner.scan(everything=everything)
    remaining = await publisher.publish_pending()
    return found, remaining
