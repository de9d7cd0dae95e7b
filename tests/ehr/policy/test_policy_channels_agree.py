"""Criterion (f): both channels that tell the imaging system what a token may see agree with the
policy engine and with a plain model of the rules (hypothesis; ARCHITECTURE.md "Telling the
imaging system").

Channel (a): ``ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>`` with the caller's token, one
study at a time and all of them in one search (as the gate asks about a QIDO-RS page).
Channel (b): the introspection response's imaging grant (patient-context tokens list study UIDs).
Each example writes a fresh little world (new ids, so examples never see each other's data).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import RunningStack
from tests.ehr.fhir.ehr_access import DCM, add_client, issue

from imagebridge.common.smart_scopes import parse_scopes
from imagebridge.ehr.admin import Admin
from imagebridge.ehr.policy.consent import CLIENT_SYSTEM
from imagebridge.ehr.policy.engine import PolicyEngine, Principal
from imagebridge.ehr.policy.labels import ACT_CODE, CONFIDENTIALITY
from imagebridge.ehr.smart.grants import Grant, GrantStore
from imagebridge.ehr.smart.introspection import IMAGING_GRANT

LABELS = {
    "none": None,
    "R": {"system": CONFIDENTIALITY, "code": "R"},
    "N": {"system": CONFIDENTIALITY, "code": "N"},
    "PSY": {"system": ACT_CODE, "code": "PSY"},
}
SENSITIVE = {"R", "PSY"}
AGES = {"adult": 40, "teen": 15, "child": 8}


@dataclass(frozen=True)
class StudyPlan:
    patient: int
    modality: str
    label: str
    withheld: str  # "no" | "this-app" | "all-apps"


@dataclass(frozen=True)
class Plan:
    ages: tuple[str, ...]
    studies: tuple[StudyPlan, ...]
    imaging_withheld_from_app: tuple[bool, ...]
    who: str  # self | proxy | backend
    patient: int
    proxy_active: bool
    group: frozenset[int]
    modality_scope: str | None


plans = st.builds(
    Plan,
    ages=st.tuples(*[st.sampled_from(sorted(AGES))] * 3),
    studies=st.lists(
        st.builds(
            StudyPlan,
            st.integers(0, 2),
            st.sampled_from(["CT", "DX", "US"]),
            st.sampled_from(sorted(LABELS)),
            st.sampled_from(["no", "no", "this-app", "all-apps"]),
        ),
        max_size=6,
    ).map(tuple),
    imaging_withheld_from_app=st.tuples(*[st.sampled_from([False, False, False, True])] * 3),
    who=st.sampled_from(["self", "proxy", "backend"]),
    patient=st.integers(0, 2),
    proxy_active=st.booleans(),
    group=st.frozensets(st.integers(0, 2)),
    modality_scope=st.sampled_from([None, None, "CT", "US"]),
)


def _born(age: int) -> str:
    today = date.today()
    return today.replace(year=today.year - age, day=min(today.day, 28)).isoformat()


def _world(plan: Plan, app: str, group: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    ns = uuid.uuid4().hex[:10]
    patients = [f"p{i}-{ns}" for i in range(3)]
    docs: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": pid, "birthDate": _born(AGES[plan.ages[i]])}
        for i, pid in enumerate(patients)
    ]
    uids: list[str] = []
    for n, s in enumerate(plan.studies):
        uid = f"2.25.{uuid.uuid4().int}"
        sid = f"s{n}-{ns}"
        uids.append(uid)
        label = LABELS[s.label]
        docs.append(
            {
                "resourceType": "ImagingStudy",
                "id": sid,
                "meta": {"security": [label] if label else []},
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
                "subject": {"reference": f"Patient/{patients[s.patient]}"},
                "modality": [{"system": DCM, "code": s.modality}],
            }
        )
        if s.withheld != "no":
            provision: dict[str, Any] = {
                "type": "deny",
                "data": [{"meaning": "instance", "reference": {"reference": f"ImagingStudy/{sid}"}}],
            }
            if s.withheld == "this-app":
                provision["actor"] = [{"reference": {"identifier": {"system": CLIENT_SYSTEM, "value": app}}}]
            docs.append(
                {
                    "resourceType": "Consent",
                    "id": f"c{n}-{ns}",
                    "status": "active",
                    "patient": {"reference": f"Patient/{patients[s.patient]}"},
                    "provision": provision,
                }
            )
    for i, withheld in enumerate(plan.imaging_withheld_from_app):
        if withheld:
            docs.append(
                {
                    "resourceType": "Consent",
                    "id": f"all{i}-{ns}",
                    "status": "active",
                    "patient": {"reference": f"Patient/{patients[i]}"},
                    "provision": {
                        "type": "deny",
                        "actor": [{"reference": {"identifier": {"system": CLIENT_SYSTEM, "value": app}}}],
                        "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "ImagingStudy"}],
                    },
                }
            )
    docs.append(
        {
            "resourceType": "RelatedPerson",
            "id": f"rp-{ns}",
            "active": plan.proxy_active,
            "patient": {"reference": f"Patient/{patients[plan.patient]}"},
        }
    )
    docs.append(
        {
            "resourceType": "Group",
            "id": group,  # the backend client's Group, reset for each example
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{patients[i]}"}} for i in sorted(plan.group)],
        }
    )
    return docs, patients, uids


def _model(plan: Plan, s: StudyPlan) -> bool:
    """The rules, stated plainly."""
    if plan.modality_scope and s.modality != plan.modality_scope:
        return False
    if s.withheld == "all-apps":
        return False
    if plan.who != "backend" and (s.withheld == "this-app" or plan.imaging_withheld_from_app[s.patient]):
        return False  # these consents name the patient app, not the backend client
    if plan.who == "backend":
        return s.patient in plan.group
    if s.patient != plan.patient:
        return False
    if plan.who == "proxy":
        return plan.proxy_active and not (plan.ages[s.patient] == "teen" and s.label in SENSITIVE)
    return True


async def _prepare(
    running: RunningStack, docs: list[dict[str, Any]], principal: Principal
) -> tuple[str, list[bool]]:
    """One administrator session per example: write the world, issue the token, ask the engine."""
    admin = Admin(running.stack.ehr_settings)
    try:
        for doc in docs:
            await admin.put_resource(doc)
        now = time.time()
        grant = Grant(
            principal.client_id,
            principal.scopes.to_string(),
            now + 600,
            now,
            patient=principal.patient,
            fhir_user=principal.fhir_user,
        )
        token = await GrantStore(admin.engine).issue(grant)
        engine = PolicyEngine(admin.store)
        studies = [d for d in docs if d["resourceType"] == "ImagingStudy"]
        seen = []
        for doc in studies:
            stored = await admin.store.read("ImagingStudy", doc["id"])
            assert stored is not None
            seen.append((await engine.may_see(principal, stored)).allowed)
        return token, seen
    finally:
        await admin.close()


@dataclass
class Shared:
    app: str  # the patient app some consents name
    backend: str  # a backend client registered for Group/<group>
    group: str
    introspector: str


_SHARED: dict[str, Shared] = {}


def _shared(running: RunningStack) -> Shared:
    if running.storage not in _SHARED:
        group = f"hypothesis-{uuid.uuid4().hex[:8]}"
        app = add_client(running, "public", "patient/*.rs")
        backend = add_client(running, "backend", "system/*.rs", f"Group/{group}")
        caller = add_client(running, "backend", "introspection")
        _SHARED[running.storage] = Shared(app, backend, group, issue(running, caller, "introspection"))
    return _SHARED[running.storage]


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_fhir_query_and_introspection_agree_with_the_policy(running: RunningStack, plan: Plan) -> None:
    shared = _shared(running)
    docs, patients, uids = _world(plan, shared.app, shared.group)
    level = "system" if plan.who == "backend" else "patient"
    narrowed = f"?modality={DCM}|{plan.modality_scope}" if plan.modality_scope else ""
    scope = parse_scopes(f"{level}/ImagingStudy.rs{narrowed}")
    if plan.who == "backend":
        principal = Principal(shared.backend, scope, group_ref=f"Group/{shared.group}")
    else:
        proxy = f"RelatedPerson/{docs[-2]['id']}" if plan.who == "proxy" else None
        principal = Principal(shared.app, scope, patients[plan.patient], proxy)
    token, engine_says = asyncio.run(_prepare(running, docs, principal))

    expected = [_model(plan, s) for s in plan.studies]
    assert engine_says == expected
    with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        channel_a = [
            http.get(
                f"{running.fhir_base}/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"}
            ).json()["total"]
            == 1
            for uid in uids
        ]
        batch = http.get(  # the gate's form: one search for a page of studies
            f"{running.fhir_base}/ImagingStudy",
            params={"identifier": ",".join(f"urn:dicom:uid|urn:oid:{uid}" for uid in uids)},
        ).json()
        grant = httpx.post(
            f"{running.stack.ehr_settings.origin}/auth/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {shared.introspector}"},
        ).json()[IMAGING_GRANT]
    assert channel_a == expected
    if uids:
        found = {i["value"] for e in batch.get("entry", []) for i in e["resource"]["identifier"]}
        assert found == {f"urn:oid:{uid}" for uid, seen in zip(uids, expected, strict=True) if seen}
        assert batch["total"] == sum(expected)
    if plan.who == "backend":
        assert grant == {"mode": "query"}
    else:
        assert grant["patient"] == patients[plan.patient]
        assert [uid in grant["studies"] for uid in uids] == expected
