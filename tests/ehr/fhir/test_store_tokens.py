"""Token searches with many alternatives (FHIR R4 §3.1.1.4.8): a backend client's Group of more than
a thousand patients, or a long ``identifier=`` list, must not exceed SQLite's expression depth (a 500)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from imagebridge.common.settings import EhrSettings
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.app import migrate
from imagebridge.ehr.fhir.store import Query, TokenCriterion, has_token


def _study(n: int) -> dict[str, object]:
    return {
        "resourceType": "ImagingStudy",
        "id": f"s{n}",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{n}"}],
        "subject": {"reference": f"Patient/p{n}"},
    }


def test_thousands_of_alternatives_in_one_search(tmp_path: Path) -> None:
    settings = EhrSettings(data_dir=tmp_path)
    migrate(settings)

    async def run() -> tuple[list[str], list[str]]:
        admin = Admin(settings)
        try:
            for n in (7, 1499, 5000):
                await admin.put_resource(_study(n))
            patients = [(None, f"Patient/p{n}") for n in range(1500)]
            in_group, _ = await admin.store.search(
                Query("ImagingStudy"), restrict=has_token("patient", patients, "ImagingStudy")
            )
            uids = tuple(("urn:dicom:uid", f"urn:oid:2.25.{n}") for n in range(1200))
            by_uid, _ = await admin.store.search(Query("ImagingStudy", [TokenCriterion("identifier", uids)]))
            return sorted(r["id"] for r in in_group), sorted(r["id"] for r in by_uid)
        finally:
            await admin.close()

    in_group, by_uid = asyncio.run(run())
    assert in_group == ["s1499", "s7"]
    assert by_uid == ["s7"]
