"""What one search shows one authorization (ehr/fhir/visible.py): a search by a list of identifiers
is decided in memory, any other search by the policy's SQL; both ways give the same page, total
and count of what labels or Consents hid, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from tests.pg import temporary_database
from tests.services import require_postgres

from imagebridge.common.settings import EhrSettings
from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.app import migrate
from imagebridge.ehr.fhir import visible as visible_module
from imagebridge.ehr.fhir.store import Query, TokenCriterion
from imagebridge.ehr.fhir.visible import Visible, visible
from imagebridge.ehr.policy.engine import PolicyEngine, Principal

UID = "urn:dicom:uid"
#: study → its patient; p1 is in the backend client's Group, p2 is not.
STUDIES = {"s1": "p1", "s2": "p1", "s3": "p2", "s4": "p1", "s5": "p1", "s6": "p2"}


def _world() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [{"resourceType": "Patient", "id": p} for p in ("p1", "p2")]
    docs += [
        {
            "resourceType": "ImagingStudy",
            "id": sid,
            "status": "available",
            "identifier": [{"system": UID, "value": f"urn:oid:2.25.{sid[1:]}"}],
            "subject": {"reference": f"Patient/{patient}"},
        }
        for sid, patient in STUDIES.items()
    ]
    docs.append(
        {  # p1 withholds s4 from every app
            "resourceType": "Consent",
            "id": "c4",
            "status": "active",
            "patient": {"reference": "Patient/p1"},
            "provision": {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": "ImagingStudy/s4"}}],
            },
        }
    )
    docs.append(
        {
            "resourceType": "Group",
            "id": "cohort",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/p1"}}],
        }
    )
    return docs


def _ask(
    settings: EhrSettings, pages: list[tuple[int, int]], studies: tuple[str, ...] = tuple(STUDIES)
) -> list[tuple[list[str], int, int]]:
    """Each (offset, count) page of ``identifier=<studies>`` as the backend client sees it."""

    async def run() -> list[tuple[list[str], int, int]]:
        admin = Admin(settings)
        try:
            principal = Principal(
                "pipeline", parse_scopes("system/ImagingStudy.rs"), group_ref="Group/cohort"
            )
            view = await PolicyEngine(admin.store).view(principal)
            scopes = view.scopes_for("ImagingStudy", ("s",))
            uids = tuple((UID, f"urn:oid:2.25.{sid[1:]}") for sid in studies)
            answers = []
            for offset, count in pages:
                query = Query("ImagingStudy", [TokenCriterion("identifier", uids)], count, offset)
                found: Visible = await visible(admin.store, view, scopes, query, count_hidden=True)
                answers.append(([r["id"] for r in found.page], found.total, found.hidden))
            return answers
        finally:
            await admin.close()

    return asyncio.run(run())


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EhrSettings]:
    data_dir = Path(tmp_path_factory.mktemp("visible"))
    with ExitStack() as cleanup:
        url = ""
        if request.param == "postgres":
            require_postgres()
            url = cleanup.enter_context(temporary_database("visible"))
        settings = EhrSettings(data_dir=data_dir, database_url=url)
        migrate(settings)

        async def seed() -> None:
            admin = Admin(settings)
            try:
                for doc in _world():
                    await admin.put_resource(doc)
            finally:
                await admin.close()

        asyncio.run(seed())
        yield settings


PAGES = [(0, 50), (0, 2), (2, 2), (1, 1), (3, 5), (0, 0)]


def test_identifier_search_pages_what_the_policy_shows(settings: EhrSettings) -> None:
    """s3 and s6 belong to a patient outside the Group; s4 is withheld by Consent (hidden: 1)."""
    answers = _ask(settings, PAGES)
    assert answers == [
        (["s1", "s2", "s5"], 3, 1),
        (["s1", "s2"], 3, 1),
        (["s5"], 3, 1),
        (["s2"], 3, 1),
        ([], 3, 1),
        ([], 3, 1),
    ]


def test_identifier_search_agrees_with_the_policy_sql(
    settings: EhrSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past :data:`IDENTIFIER_MATCHES` matches the search takes the SQL way: same answers."""
    in_memory = _ask(settings, PAGES)
    monkeypatch.setattr(visible_module, "IDENTIFIER_MATCHES", 2)
    assert _ask(settings, PAGES) == in_memory


def test_sql_search_counts_matches_when_the_page_is_empty(
    settings: EhrSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SQL way reads a page and its counts in one statement; a page past the end or a search
    whose every match is hidden has no row to carry them, and still gets its exact counts."""
    monkeypatch.setattr(visible_module, "IDENTIFIER_MATCHES", 0)
    assert _ask(settings, [(0, 50), (1, 5)], ("s4",)) == [([], 0, 1), ([], 0, 1)]
    assert _ask(settings, [(3, 5), (9, 1), (0, 0)]) == [([], 3, 1), ([], 3, 1), ([], 3, 1)]
