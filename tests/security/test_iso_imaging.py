"""Imaging isolation (security.md §3: ISO-01, ISO-02, ISO-03, ISO-05, ISO-18) against the
running pair: Alice's patient-context token never reaches Bob's data, on any route, and the
answer is byte-identical to the one for a UID that does not exist (no existence oracle)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.conftest import RunningStack
from tests.gate_stack import GateStack
from tests.imaging.gate.uids import InstanceUids, first_instance
from tests.imaging.tokens import patient_token

from imagebridge.apps import demo_data
from imagebridge.imaging.dicomweb import routes as dicomweb_routes

UNKNOWN = InstanceUids("2.25.111111111", "2.25.222222222", "2.25.333333333", "NOBODY")


def _fill(template: str, uids: InstanceUids) -> str:
    values = {
        "study": uids.study,
        "series": uids.series,
        "instance": uids.instance,
        "frames": "1",
        "tagpath:path": "7FE00010",
    }
    for name, value in values.items():
        template = template.replace(f"{{{name}}}", value)
    return template


def _retrieval_templates() -> list[str]:
    return [
        route.path
        for route in dicomweb_routes.routes
        if "{study}" in getattr(route, "path", "") and "GET" in (getattr(route, "methods", None) or ())
    ]


@pytest.fixture(scope="module")
def alice_http(gate_stack: GateStack) -> Iterator[httpx.Client]:
    token = gate_stack.patient_token("alice")
    with httpx.Client(
        base_url=gate_stack.stack.imaging_settings.origin,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as http:
        yield http


def _assert_same_as_unknown(http: httpx.Client, bob_path: str, unknown_path: str) -> None:
    for method in ("GET", "HEAD"):
        bob = http.request(method, bob_path)
        unknown = http.request(method, unknown_path)
        assert bob.status_code == unknown.status_code, (method, bob_path)
        assert bob.status_code in (200, 404), (method, bob_path, bob.status_code)
        assert bob.content == unknown.content, (method, bob_path)
        assert {k: v for k, v in bob.headers.items() if k not in ("date", "content-length")} == {
            k: v for k, v in unknown.headers.items() if k not in ("date", "content-length")
        }
        assert demo_data.BOB.mrn.encode() not in bob.content
        assert b"DICM" not in bob.content


@pytest.mark.parametrize("template", _retrieval_templates())
def test_iso01_iso02_other_patients_uids_on_every_route(alice_http: httpx.Client, template: str) -> None:
    bob = first_instance("ACC-2001")
    _assert_same_as_unknown(alice_http, _fill(template, bob), _fill(template, UNKNOWN))


@pytest.mark.parametrize("template", [t for t in _retrieval_templates() if "{series}" in t])
def test_iso03_mixed_hierarchy_resolves_to_the_deepest_object(
    alice_http: httpx.Client, template: str
) -> None:
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    mixed = InstanceUids(alice.study, bob.series, bob.instance, alice.patient_id)
    unknown = InstanceUids(alice.study, UNKNOWN.series, UNKNOWN.instance, alice.patient_id)
    _assert_same_as_unknown(alice_http, _fill(template, mixed), _fill(template, unknown))


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies?PatientID={mrn}",
        "/dicom-web/series?StudyInstanceUID={study}",
        "/dicom-web/instances?0020000D={study}",
        "/dicom-web/studies?PatientName=*&fuzzymatching=true&includefield=all",
    ],
)
def test_iso04_iso05_searches_never_show_the_other_patient(alice_http: httpx.Client, path: str) -> None:
    bob = first_instance("ACC-2001")
    response = alice_http.get(
        path.format(mrn=demo_data.BOB.mrn, study=bob.study), headers={"Accept": "application/dicom+json"}
    )
    assert response.status_code == 200
    assert demo_data.BOB.mrn not in response.text
    assert bob.study not in response.text


def _patient_ids(body: Any) -> set[str]:
    return {item["00100020"]["Value"][0] for item in body if "00100020" in item}


def test_iso18_no_bleed_between_50_concurrent_clients(sqlite_stack: RunningStack) -> None:
    """50 patient-context clients (Alice, Bob) at once, caches warm: nobody sees another's rows."""
    people = {"alice": (demo_data.ALICE, "ACC-1002"), "bob": (demo_data.BOB, "ACC-2001")}
    clients = [
        (p, patient_token(sqlite_stack, p, f"Patient/{p}"))
        for p in itertools.islice(itertools.cycle(people), 50)
    ]
    base = sqlite_stack.dicomweb_base

    async def one(http: httpx.AsyncClient, patient: str, token: str) -> list[tuple[str, set[str]]]:
        person, accession = people[patient]
        study = sqlite_stack.seeded.study_uids[accession]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json"}
        seen = []
        for url in (f"{base}/studies", f"{base}/studies/{study}/metadata", f"{base}/instances"):
            response = await http.get(url, headers=headers)
            assert response.status_code == 200, (url, response.status_code, response.text)
            seen.append((person.mrn, _patient_ids(response.json())))
        return seen

    async def run() -> list[list[tuple[str, set[str]]]]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as http:
            for patient, token in clients:  # warm the introspection cache, one client at a time
                await one(http, patient, token)
            return await asyncio.gather(*(one(http, p, t) for p, t in clients))

    results = [item for per_client in asyncio.run(run()) for item in per_client]
    assert len(results) == 150
    for mrn, found in results:
        assert found == {mrn}
