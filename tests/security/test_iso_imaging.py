"""Imaging isolation (security.md §3: ISO-01, ISO-02, ISO-03, ISO-05, ISO-06, ISO-10, ISO-11,
ISO-17, ISO-18) against the running pair: Alice's patient-context token never reaches Bob's data,
on any route, and the answer is byte-identical to the one for a UID that does not exist (no
existence oracle)."""

from __future__ import annotations

import asyncio
import http.client
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


def _without_dates(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in ("date", "content-length")}


def _fake_uids(count: int) -> list[str]:
    return [f"2.25.{987654321000 + n * 7919}" for n in range(count)]


def _bob_uids() -> list[str]:
    bob = [first_instance(a) for a in ("ACC-2001", "ACC-2002")]
    return [u for b in bob for u in (b.study, b.series, b.instance)]


_PROBES = (
    "/dicom-web/studies/{uid}",
    "/dicom-web/studies/{uid}/metadata",
    "/dicom-web/studies/{uid}/series",
    "/dicom-web/studies/{uid}/instances",
    "/dicom-web/studies?StudyInstanceUID={uid}",
    "/dicom-web/series?SeriesInstanceUID={uid}",
    "/dicom-web/instances?SOPInstanceUID={uid}",
)


def test_iso06_enumeration_of_real_and_unknown_uids_is_indistinguishable(
    gate_stack: GateStack, alice_http: httpx.Client
) -> None:
    """ISO-06: Bob's real UIDs among nonexistent ones, on WADO, metadata and QIDO routes, answer
    alike in status, body and headers, and every probe of Bob's study is audited as a denial.
    Latency is not asserted (the project forbids timed assertions); both kinds of UID take the
    same code path (index lookup, then the gate's study decision) and end in the same not_found()."""
    real, fake = _bob_uids(), _fake_uids(12)
    assert not set(real) & set(fake)
    for template in _PROBES:
        answers = {}
        for uid in [u for pair in zip(real, fake, strict=False) for u in pair] + fake[len(real) :]:
            response = alice_http.get(template.format(uid=uid), headers={"Accept": "application/dicom+json"})
            answers[uid] = (response.status_code, response.content, _without_dates(response))
            assert demo_data.BOB.mrn.encode() not in response.content
        assert len(set(map(repr, answers.values()))) == 1, (template, answers)
        assert next(iter(answers.values()))[0] in (200, 404), template
    bob_studies = {first_instance(a).study for a in ("ACC-2001", "ACC-2002")}
    denials = [
        row
        for row in gate_stack.audit_rows(str(alice_http.headers["Authorization"]).removeprefix("Bearer "))
        if row.study_uid in bob_studies
    ]
    # /studies/{uid}, /metadata, /series, /instances: one denial each per study of Bob's
    assert {(row.study_uid, row.request_path, row.status, row.outcome) for row in denials} >= {
        (study, template.format(uid=study), 404, "deny") for study in bob_studies for template in _PROBES[:2]
    }


def _study_uids(body: list[dict[str, Any]]) -> set[str]:
    return {item["0020000D"]["Value"][0] for item in body}


@pytest.mark.parametrize("separator", [",", "\\"])
def test_iso10_a_search_naming_both_patients_returns_only_the_callers(
    alice_http: httpx.Client, separator: str
) -> None:
    """ISO-10: a UID-list match (PS3.18 §8.3.4.1) naming Alice's and Bob's studies returns
    Alice's alone, at every level. (No route serves several studies in one retrieval: there is no
    archive download, so nothing there could be partly someone else's.)"""
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    uids = separator.join([bob.study, alice.study, first_instance("ACC-2002").study])
    for path in ("/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"):
        response = alice_http.get(
            path, params={"StudyInstanceUID": uids}, headers={"Accept": "application/dicom+json"}
        )
        assert response.status_code == 200, (path, response.text)
        assert _study_uids(response.json()) == {alice.study}, path
        assert demo_data.BOB.mrn not in response.text
        assert bob.study not in response.text


def test_iso11_another_patients_etag_is_not_found_not_304(
    gate_stack: GateStack, alice_http: httpx.Client
) -> None:
    """ISO-11 (RFC 9110 §13.1.2): Alice replaying Bob's metadata ETag gets the unknown-UID 404."""
    bob = first_instance("ACC-2001")
    with httpx.Client(
        base_url=gate_stack.stack.imaging_settings.origin,
        headers={"Authorization": f"Bearer {gate_stack.patient_token('bob')}"},
        timeout=30,
    ) as bob_http:
        own = bob_http.get(f"/dicom-web/studies/{bob.study}/metadata")
        assert own.status_code == 200
        etag = own.headers["etag"]
        assert (
            bob_http.get(
                f"/dicom-web/studies/{bob.study}/metadata", headers={"If-None-Match": etag}
            ).status_code
            == 304
        )
    probe = alice_http.get(f"/dicom-web/studies/{bob.study}/metadata", headers={"If-None-Match": etag})
    unknown = alice_http.get(f"/dicom-web/studies/{UNKNOWN.study}/metadata", headers={"If-None-Match": etag})
    assert probe.status_code == 404
    assert (probe.content, _without_dates(probe)) == (unknown.content, _without_dates(unknown))
    assert "etag" not in probe.headers


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/{study}/metadata",
        "/dicom-web/studies/{study}",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/1",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/rendered",
        "/dicom-web/studies?PatientID={patient_id}",
        "/dicom-web/studies/{study}/series",
        "/dicom-web/studies/{study}/instances",
    ],
)
def test_iso11_phi_responses_are_kept_from_shared_caches(alice_http: httpx.Client, path: str) -> None:
    """ISO-11 (RFC 9111 §5.2.2.7, §4.1): every 200 carrying Alice's data is ``private`` (never in a
    shared cache) and varies on ``Authorization``; all but metadata (ETag revalidation) are also
    ``no-store``."""
    response = alice_http.get(
        _fill(path, first_instance("ACC-1002")).replace("{patient_id}", demo_data.ALICE.mrn),
        headers={"Accept": "*/*"},
    )
    assert response.status_code == 200, response.text
    directives = {d.strip() for d in response.headers["cache-control"].split(",")}
    assert "private" in directives
    assert "no-store" in directives or path.endswith("/metadata")
    assert "authorization" in {v.strip().lower() for v in response.headers["vary"].split(",")}


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/{study}/metadata",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/999",
        "/dicom-web/studies/{study}/series/{series}/instances/{instance}/bulkdata/00100010",
        "/dicom-web/studies/{study}/series/1.2.3.x/instances/{instance}",
        "/dicom-web/studies?PatientID={patient_id}&BadKey=1",
        "/dicom-web/studies?PatientBirthDate=19750930-&limit=-1",
    ],
)
def test_iso11_error_bodies_name_nothing_of_the_other_patient(alice_http: httpx.Client, path: str) -> None:
    """ISO-11 (FHIR secpriv "no information leaks when errors occur"): Alice's errors on Bob's
    objects carry no id, name or date of his."""
    response = alice_http.get(
        _fill(path, first_instance("ACC-2001")).replace("{patient_id}", demo_data.BOB.mrn),
        headers={"Accept": "*/*"},
    )
    assert 400 <= response.status_code < 500, response.status_code
    for leak in (demo_data.BOB.mrn, "Baker", "19750930", "1975-09-30", first_instance("ACC-2001").study):
        assert leak not in response.text or leak in path.replace("{study}", first_instance("ACC-2001").study)


def _raw_get(origin: str, path: str, token: str) -> tuple[int, bytes, str]:
    """GET exactly ``path`` as sent on the wire (no client-side normalisation of dot segments)."""
    url = httpx.URL(origin)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.putheader("Authorization", f"Bearer {token}")
        connection.putheader("Accept", "*/*")
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("location", "")
    finally:
        connection.close()


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies%2F{bob}",
        "/dicom-web/studies/{alice}%2F..%2F{bob}",
        "/dicom-web/studies/{alice}/%2E%2E/{bob}",
        "/dicom-web/studies/{alice}/../{bob}",
        "/dicom-web/studies/{alice}/series/../../{bob}",
        "//dicom-web/studies/{bob}",
        "/dicom-web//studies/{bob}",
        "/dicom-web/studies//{bob}",
        "/dicom-web/./studies/{bob}",
        "/dicom-web/studies/./{bob}",
        "/dicom-web/studies/{bob}/",
        "/dicom-web/studies/{bob}/metadata/",
        "/DICOM-WEB/studies/{bob}",
        "/dicom-web/STUDIES/{bob}/metadata",
        "/Dicom-Web/Studies/{bob}",
        "/dicom-web/studies/{bob};jsessionid=1",
        "/dicom-web/studies;x=1/{bob}/metadata",
        "/dicom-web/studies/{bob}%3Bx=1/metadata",
        "/dicom-web/studies/{bob}%00/metadata",
        "/dicom-web/studies/{bob}%20/metadata",
        "/dicom-web/studies/{alice}/series/{aseries}/instances/{ainstance}/bulkdata/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/dicom-web/studies/{alice}/series/{aseries}/instances/{ainstance}/bulkdata/../../../../etc/passwd",
        "/dicom-web/studies/..%2F..%2F..%2F..%2Fetc%2Fpasswd/metadata",
        "/dicom-web/studies/{bob}/" + "a" * 20000,
        "/dicom-web/studies/" + "1." * 8000 + "1/metadata",
    ],
)
def test_iso17_url_normalisation_never_reaches_the_other_patient(gate_stack: GateStack, path: str) -> None:
    """ISO-17 (RFC 3986 §6; OWASP WSTG path traversal): encoded slashes and dots, doubled and dot
    segments, a trailing slash, the route prefix in other case, ``;params`` and overlong paths
    with Alice's token aimed at Bob's objects (or past the blob store) are 400/404 or a client
    error for the size (414/431), never Bob's data, never a 500, never a file of the host. A
    trailing slash is redirected (307, Starlette's routing, the same for any UID) to the path
    without it, which is then the unknown-UID 404."""
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    sent = path.format(alice=alice.study, aseries=alice.series, ainstance=alice.instance, bob=bob.study)
    origin, token = gate_stack.stack.imaging_settings.origin, gate_stack.patient_token("alice")
    status, body, location = _raw_get(origin, sent, token)
    if status == 307 and sent.endswith("/"):
        assert location == origin + sent.rstrip("/")
        status, body, location = _raw_get(origin, sent.rstrip("/"), token)
    assert status in (400, 404, 414, 431), (sent[:200], status, body[:300])
    assert demo_data.BOB.mrn.encode() not in body
    assert b"DICM" not in body
    assert b"root:" not in body
    assert bob.series.encode() not in body
