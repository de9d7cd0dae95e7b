"""``POST [base]`` with a ``batch`` Bundle (FHIR R4 §3.1.0.11) against the running EHR: entries
processed on their own, in order, each through the single interaction's scopes, policy and audit;
malformed Bundles refused whole with a 4xx OperationOutcome and nothing written."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import add_client, cohort, get, issue, published_study, put, study, unique

from imagebridge.apps.demo_data import MRN_SYSTEM
from imagebridge.common.balp import GRANT_URN
from imagebridge.common.tokens import token_id
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.tables import resources

SCOPE = "system/ImagingStudy.crus system/Endpoint.c"


def _new_patient(running: RunningStack, prefix: str) -> str:
    """A new Patient whose MRN is its id (the imaging system publishes studies by MRN)."""
    pid = unique(prefix)
    put(running, {"resourceType": "Patient", "id": pid, "identifier": [{"system": MRN_SYSTEM, "value": pid}]})
    return pid


@pytest.fixture(scope="module")
def patient(running: RunningStack) -> str:
    """A patient of this module's own, so its access report holds only this module's events."""
    return _new_patient(running, "batch")


@pytest.fixture(scope="module")
def writer(running: RunningStack, patient: str) -> str:
    """A backend client registered for a Group holding ``patient`` (it reads and writes there)."""
    group = unique("batch-cohort")
    put(running, cohort(group, patient))
    return issue(running, add_client(running, "backend", SCOPE, group=f"Group/{group}"), SCOPE)


def _uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _post(
    running: RunningStack, token: str | None, body: Any, *, raw: bytes | None = None, prefer: str = ""
) -> httpx.Response:
    headers = {"Content-Type": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if prefer:
        headers["Prefer"] = prefer
    return httpx.post(
        running.fhir_base, content=raw if raw is not None else orjson.dumps(body), headers=headers, timeout=60
    )


def _batch(*entries: dict[str, Any], kind: str = "batch") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _entry(method: str, url: str, resource: dict[str, Any] | None = None, **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    return entry


def _by_uid(running: RunningStack, token: str, uid: str) -> list[dict[str, Any]]:
    bundle = get(running, "ImagingStudy", token, identifier=f"urn:dicom:uid|urn:oid:{uid}").json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_mixed_creates_and_updates_answered_in_order(
    running: RunningStack, writer: str, patient: str
) -> None:
    kept, updated, conditional, twice = _uid(), _uid(), _uid(), _uid()
    first = _post(
        running,
        writer,
        _batch(
            _entry("POST", "ImagingStudy", published_study(kept, patient)),
            _entry(
                "PUT",
                f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{updated}",
                published_study(updated, patient),
            ),
        ),
    )
    assert first.status_code == 200, first.text
    study_id = first.json()["entry"][1]["resource"]["id"]
    replaced = {**published_study(updated, patient, "2025-05-06"), "id": study_id}
    answer = _post(
        running,
        writer,
        _batch(
            _entry(
                "POST",
                "ImagingStudy",
                published_study(kept, patient, "1999-01-01"),
                ifNoneExist=f"identifier=urn:dicom:uid|urn:oid:{kept}",
            ),
            _entry("PUT", f"{running.fhir_base}/ImagingStudy/{study_id}", replaced),
            _entry("POST", "Endpoint", {"resourceType": "Endpoint", "status": "active"}),
            _entry(
                "PUT",
                f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{conditional}",
                published_study(conditional, patient),
            ),
            _entry(
                "POST",
                "ImagingStudy",
                published_study(twice, patient),
                ifNoneExist=f"identifier=urn:dicom:uid|urn:oid:{twice}",
            ),
            _entry(
                "POST",
                "ImagingStudy",
                published_study(twice, patient),
                ifNoneExist=f"identifier=urn:dicom:uid|urn:oid:{twice}",
            ),
        ),
        prefer="return=minimal",
    )
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["type"] == "batch-response"
    responses = [e["response"] for e in bundle["entry"]]
    assert [r["status"] for r in responses] == [
        "200 OK",  # If-None-Exist matched: unchanged
        "200 OK",  # updated
        "201 Created",
        "201 Created",  # conditional update without a match creates
        "201 Created",
        "200 OK",  # the entry before it created the match: entries run in order
    ]
    assert all("resource" not in e for e in bundle["entry"])  # Prefer: return=minimal
    assert responses[1]["location"].startswith(f"{running.fhir_base}/ImagingStudy/{study_id}/_history/")
    assert responses[1]["etag"] == f'W/"{responses[1]["location"].rsplit("/", 1)[1]}"'
    assert responses[2]["location"].startswith(f"{running.fhir_base}/Endpoint/")
    assert all(r["lastModified"].endswith("Z") for r in responses)
    assert [s["started"] for s in _by_uid(running, writer, kept)] == ["2025-02-03"]
    assert [s["started"] for s in _by_uid(running, writer, updated)] == ["2025-05-06"]
    assert len(_by_uid(running, writer, conditional)) == 1
    assert len(_by_uid(running, writer, twice)) == 1
    assert _by_uid(running, writer, twice)[0]["subject"]["reference"] == f"Patient/{patient}"


def test_an_entry_outside_the_scopes_fails_alone_and_each_entry_is_audited(
    running: RunningStack, patient: str
) -> None:
    scope = "system/ImagingStudy.c"  # no update, no Patient
    token = issue(running, add_client(running, "backend", scope), scope)
    created, refused = _uid(), _uid()
    answer = _post(
        running,
        token,
        _batch(
            _entry(
                "PUT",
                f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{refused}",
                published_study(refused, patient),
            ),
            _entry("POST", "ImagingStudy", published_study(created, patient)),
            _entry("POST", "Patient", {"resourceType": "Patient"}),
            _entry("POST", "ImagingStudy", {"resourceType": "Patient"}),
            _entry("GET", "ImagingStudy"),
            _entry("POST", "Unknown", {"resourceType": "Unknown"}),
        ),
    )
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "403 Forbidden",
        "201 Created",
        "403 Forbidden",
        "400 Bad Request",
        "405 Method Not Allowed",
        "404 Not Found",
    ]
    for failed in entries[:1] + entries[2:]:
        assert failed["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert "resource" not in failed
    assert "do not allow 'u' on ImagingStudy" in entries[0]["response"]["outcome"]["issue"][0]["diagnostics"]
    stored = entries[1]["resource"]
    assert stored["subject"]["reference"] == f"Patient/{patient}"
    assert entries[1]["fullUrl"] == f"{running.fhir_base}/ImagingStudy/{stored['id']}"
    # the entries were audited as single writes: the create names the patient and the study
    report = issue(
        running, "demo-app", "patient/AuditEvent.rs", patient=patient, fhir_user=f"Patient/{patient}"
    )
    events = get(running, "AuditEvent", report, patient=patient, _count="1000").json()["entry"]
    mine = [
        e["resource"]
        for e in events
        if any(f"{GRANT_URN}{token_id(token)}" in a.get("policy", []) for a in e["resource"]["agent"])
    ]
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in mine] == [("create", "0")]
    assert {"reference": f"ImagingStudy/{stored['id']}"} in [x["what"] for x in mine[0]["entity"]]


def test_audit_events_in_a_batch_are_their_own_record(running: RunningStack) -> None:
    """The imaging system's publishing path: AuditEvent creates kept once per record key, and a
    writer without ``system/AuditEvent.c`` refused entry by entry."""
    scope = "system/AuditEvent.c"
    token = issue(running, add_client(running, "backend", scope), scope)
    keys = [unique("imaging") for _ in range(3)]

    def event(key: str) -> dict[str, Any]:
        return {
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110103"},
            "recorded": "2026-01-02T03:04:05.000Z",
            "agent": [{"who": {"identifier": {"value": "x"}}, "requestor": True}],
            "source": {"observer": {"display": "test"}},
            "entity": [{"what": {"identifier": {"system": "urn:imagebridge:imaging-audit", "value": key}}}],
        }

    def entries() -> list[dict[str, Any]]:
        return [
            _entry(
                "POST",
                "AuditEvent",
                event(k),
                ifNoneExist=f"entity:identifier=urn:imagebridge:imaging-audit|{k}",
            )
            for k in keys
        ]

    first = _post(running, token, _batch(*entries()), prefer="return=minimal")
    again = _post(running, token, _batch(*entries()), prefer="return=minimal")
    assert [e["response"]["status"] for e in first.json()["entry"]] == ["201 Created"] * 3
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK"] * 3
    assert [e["response"]["location"] for e in first.json()["entry"]] == [
        e["response"]["location"] for e in again.json()["entry"]
    ]
    other = issue(running, add_client(running, "backend", "system/*.cruds"), "system/*.cruds")
    refused = _post(running, other, _batch(*entries()))
    assert [e["response"]["status"] for e in refused.json()["entry"]] == ["403 Forbidden"] * 3


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[]", 400, "must be a Bundle"),
        (orjson.dumps({"resourceType": "Patient"}), 400, "must be a Bundle"),
        (orjson.dumps(_batch(kind="collection")), 400, "Bundle.type must be 'batch'"),
        (orjson.dumps(_batch(kind="transaction")), 400, "only batch Bundles are supported"),
        (orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": {}}), 400, "must be an array"),
        (orjson.dumps(_batch({"resource": {"resourceType": "Endpoint"}})), 400, "entry[0] has no request"),
        (orjson.dumps(_batch(_entry("POST", ""))), 400, "entry[0].request.url is missing"),
        (orjson.dumps(_batch(_entry("FOO", "Endpoint"))), 400, "request.method must be one of"),
        (orjson.dumps(_batch(*[_entry("POST", "Endpoint")] * 1001)), 413, "at most 1000 entries"),
    ],
)
def test_malformed_bundles_are_refused_whole(
    running: RunningStack, writer: str, patient: str, body: bytes, status: int, says: str
) -> None:
    """Nothing of a refused Bundle is written: a valid last entry stays unwritten."""
    uid = _uid()
    if body.startswith(b"{") and b'"entry":[' in body:
        bundle = orjson.loads(body)
        bundle["entry"].append(_entry("POST", "ImagingStudy", published_study(uid, patient)))
        body = orjson.dumps(bundle)
    answer = _post(running, writer, None, raw=body)
    assert answer.status_code == status, answer.text
    outcome = answer.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert says in outcome["issue"][0]["diagnostics"]
    assert _by_uid(running, writer, uid) == []


def test_batch_needs_a_token_json_and_a_bounded_body(running: RunningStack, writer: str) -> None:
    assert _post(running, None, _batch()).status_code == 401
    wrong_type = httpx.post(
        running.fhir_base,
        content=b"{}",
        headers={"Authorization": f"Bearer {writer}", "Content-Type": "text/plain"},
    )
    assert wrong_type.status_code == 415
    huge = _post(running, writer, None, raw=b" " * (8 * 1024 * 1024 + 1))
    assert huge.status_code == 413
    empty = _post(running, writer, _batch())
    assert empty.json() == {"resourceType": "Bundle", "type": "batch-response", "entry": []}


def test_capability_statement_names_batch_only(running: RunningStack) -> None:
    rest = httpx.get(f"{running.fhir_base}/metadata").json()["rest"][0]
    assert rest["interaction"] == [{"code": "batch"}]


def _consented_patient(running: RunningStack) -> tuple[str, str]:
    """A patient of its own with an MRN, and a backend client registered for a Group holding only
    that patient, allowed to write studies and Consents there."""
    pid = _new_patient(running, "batch-consent")
    group = unique("batch-consent-cohort")
    put(running, cohort(group, pid))
    scope = "system/ImagingStudy.c system/Consent.c"
    return pid, issue(running, add_client(running, "backend", scope, group=f"Group/{group}"), scope)


def _withholding_studies(patient: str) -> dict[str, Any]:
    """A Consent of ``patient`` withholding every ImagingStudy from every app (ehr/policy/consent.py)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "IDSCL"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {"type": "deny"},
    }


def test_a_later_entry_sees_the_consent_an_earlier_entry_wrote(running: RunningStack) -> None:
    """The entries share the caller's policy view only while the data stands still: the Consent of
    the second entry refuses the third entry's study, as it refuses the third single request."""
    batched, batch_token = _consented_patient(running)
    answer = _post(
        running,
        batch_token,
        _batch(
            _entry("POST", "ImagingStudy", published_study(_uid(), batched)),
            _entry("POST", "Consent", _withholding_studies(batched)),
            _entry("POST", "ImagingStudy", published_study(_uid(), batched)),
        ),
        prefer="return=minimal",
    )
    assert answer.status_code == 200, answer.text
    in_batch = [e["response"]["status"] for e in answer.json()["entry"]]

    single, single_token = _consented_patient(running)
    headers = {"Authorization": f"Bearer {single_token}", "Content-Type": "application/fhir+json"}
    alone = [
        httpx.post(f"{running.fhir_base}/{resource['resourceType']}", json=resource, headers=headers)
        for resource in (
            published_study(_uid(), single),
            _withholding_studies(single),
            published_study(_uid(), single),
        )
    ]
    assert [r.status_code for r in alone] == [201, 201, 403]
    assert in_batch == ["201 Created", "201 Created", "403 Forbidden"]


def test_many_entries_answer_as_the_single_requests_do(
    running: RunningStack, writer: str, patient: str
) -> None:
    """Conditional creates matching stored studies (each answering the match unchanged), updates of
    a study the caller may not see and creates for a patient outside its Group, interleaved: the
    entries sharing one policy view answer each as its single request does."""
    outsider = _new_patient(running, "batch-outsider")
    hidden = study(unique("batch-hidden"), outsider)
    put(running, hidden)
    uids = [_uid() for _ in range(8)]
    stored = _post(
        running, writer, _batch(*[_entry("POST", "ImagingStudy", published_study(u, patient)) for u in uids])
    )
    assert [e["response"]["status"] for e in stored.json()["entry"]] == ["201 Created"] * len(uids)

    def requests(uid: str) -> list[tuple[str, str, dict[str, Any], dict[str, str]]]:
        """(method, url, resource, ifNoneExist) of one round."""
        return [
            (
                "POST",
                "ImagingStudy",
                published_study(uid, patient, "1999-01-01"),
                {"ifNoneExist": f"identifier=urn:dicom:uid|urn:oid:{uid}"},
            ),
            ("PUT", f"ImagingStudy/{hidden['id']}", hidden, {}),
            ("POST", "ImagingStudy", published_study(_uid(), outsider), {}),
        ]

    rounds = [r for uid in uids for r in requests(uid)]
    answer = _post(running, writer, _batch(*[_entry(m, url, res, **req) for m, url, res, req in rounds]))
    assert answer.status_code == 200, answer.text
    in_batch = [
        (
            e["response"]["status"].split()[0],
            e.get("resource", {}).get("id"),
            e.get("resource", {}).get("meta", {}).get("versionId"),
        )
        for e in answer.json()["entry"]
    ]
    alone = []
    for method, url, resource, request in rounds:
        headers = {"Authorization": f"Bearer {writer}", "Content-Type": "application/fhir+json"}
        if "ifNoneExist" in request:
            headers["If-None-Exist"] = request["ifNoneExist"]
        single = httpx.request(
            method, f"{running.fhir_base}/{url}", json=resource, headers=headers, timeout=60
        )
        body = single.json() if single.status_code < 300 else {}
        alone.append((str(single.status_code), body.get("id"), body.get("meta", {}).get("versionId")))
    assert in_batch == alone
    assert [status for status, _, _ in alone] == ["200", "404", "403"] * len(uids)
    assert all(rid is not None for status, rid, _ in alone if status == "200")


def test_if_none_exist_on_a_put_entry_fails_that_entry_alone(
    running: RunningStack, writer: str, patient: str
) -> None:
    """``request.ifNoneExist`` is for creates (FHIR R4 Bundle.entry.request.ifNoneExist): a PUT
    carrying it is 400, not an update that silently ignores it; the other entries are processed."""
    stored, kept, refused = _uid(), _uid(), _uid()
    created = _post(running, writer, _batch(_entry("POST", "ImagingStudy", published_study(stored, patient))))
    study_id = created.json()["entry"][0]["resource"]["id"]
    condition = f"identifier=urn:dicom:uid|urn:oid:{stored}"
    answer = _post(
        running,
        writer,
        _batch(
            _entry(
                "PUT",
                f"ImagingStudy/{study_id}",
                {**published_study(stored, patient, "1999-01-01"), "id": study_id},
                ifNoneExist=condition,
            ),
            _entry("POST", "ImagingStudy", published_study(kept, patient)),
            _entry(
                "PUT",
                f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{refused}",
                published_study(refused, patient),
                ifNoneExist=f"identifier=urn:dicom:uid|urn:oid:{refused}",
            ),
        ),
    )
    assert answer.status_code == 200, answer.text
    entries = answer.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["400 Bad Request", "201 Created", "400 Bad Request"]
    for failed in (entries[0], entries[2]):
        issue_ = failed["response"]["outcome"]["issue"][0]
        assert issue_["code"] == "invalid"
        assert "ifNoneExist applies to POST" in issue_["diagnostics"]
    assert [s["started"] for s in _by_uid(running, writer, stored)] == ["2025-02-03"]
    assert len(_by_uid(running, writer, kept)) == 1
    assert _by_uid(running, writer, refused) == []


def test_if_none_exist_never_returns_a_match_the_caller_may_not_see(
    running: RunningStack, writer: str, patient: str
) -> None:
    """A conditional create (FHIR R4 §3.1.0.8) whose search matches a study outside the caller's
    reach (another patient's, not in its Group) is 403 and discloses nothing, as a conditional
    update matching it is, in a batch entry as in the single interaction; nothing is written."""
    outsider, taken = _new_patient(running, "batch-hidden"), _uid()
    hidden = {**published_study(taken, outsider), "id": unique("hidden")}
    hidden["subject"] = {"reference": f"Patient/{outsider}"}
    put(running, hidden)
    condition = f"identifier=urn:dicom:uid|urn:oid:{taken}"
    single = httpx.post(
        f"{running.fhir_base}/ImagingStudy",
        content=orjson.dumps(published_study(taken, patient)),
        headers={
            "Authorization": f"Bearer {writer}",
            "Content-Type": "application/fhir+json",
            "If-None-Exist": condition,
        },
        timeout=60,
    )
    entry = _post(
        running,
        writer,
        _batch(_entry("POST", "ImagingStudy", published_study(taken, patient), ifNoneExist=condition)),
    )
    assert entry.status_code == 200, entry.text
    assert single.status_code == 403, single.text
    assert [e["response"]["status"] for e in entry.json()["entry"]] == ["403 Forbidden"]
    for answer in (single, entry):
        assert hidden["id"] not in answer.text
        assert outsider not in answer.text
    assert _by_uid(running, writer, taken) == []


def _events_of(running: RunningStack, token: str) -> list[dict[str, Any]]:
    """The committed AuditEvents naming ``token``'s id, straight from the EHR's database (events
    that name no patient are in no one's access report)."""

    async def run() -> list[dict[str, Any]]:
        admin = Admin(running.stack.ehr_settings)
        try:
            async with admin.engine.connect() as conn:
                rows = await conn.execute(
                    select(resources.c.content).where(
                        resources.c.resource_type == "AuditEvent",
                        resources.c.content.contains(f"{GRANT_URN}{token_id(token)}"),
                    )
                )
                return [orjson.loads(row.content) for row in rows]
        finally:
            await admin.close()

    return asyncio.run(run())


def test_a_bundle_refused_whole_is_one_batch_audit_event(running: RunningStack, patient: str) -> None:
    """A Bundle refused before any entry is processed (not a batch, a transaction) is recorded as
    one AuditEvent of subtype ``batch`` (ehr/audit.py BATCH) with the refusal as its outcome, naming
    the caller; its entries, never processed, are not audited."""
    client = add_client(running, "backend", SCOPE)
    token = issue(running, client, SCOPE)
    study_entry = _entry("POST", "ImagingStudy", published_study(_uid(), patient))
    assert _post(running, token, _batch(study_entry, kind="collection")).status_code == 400
    assert _post(running, token, _batch(study_entry, kind="transaction")).status_code == 400
    get(running, "AuditEvent", token)  # a read of AuditEvents first commits what the EHR journaled
    batches = [e for e in _events_of(running, token) if e["subtype"][0]["code"] == "batch"]
    assert [(e["type"]["code"], e["action"], e["outcome"]) for e in batches] == [("rest", "E", "4")] * 2
    for event in batches:
        assert event["agent"][0]["who"]["identifier"]["value"] == client
        assert not [e for e in event["entity"] if "what" in e]  # nothing was disclosed or written
    assert not [e for e in _events_of(running, token) if e["subtype"][0]["code"] == "create"]
