"""The first end-to-end path, real (issue 2 §7), on SQLite and PostgreSQL.

A backend client registered once, at the EHR only, gets a token with client_credentials and
private_key_jwt; searches ImagingStudy?patient=…&_include=ImagingStudy:endpoint at the EHR;
follows Endpoint.address + /studies/{uid}; the imaging system introspects the token at the EHR
and streams the whole study. Every instance must arrive byte-identical.
"""

from __future__ import annotations

import hashlib

import httpx

from imagebridge.apps import demo_data
from imagebridge.apps.smart_client import backend_token, fetch_study, study_uid
from imagebridge.apps.synthetic import dataset_bytes, generate_study
from tests.conftest import TEST_SCALE, RunningStack


def _expected(accession: str) -> dict[str, str]:
    spec = next(s for s, _ in demo_data.studies(TEST_SCALE) if s.accession_number == accession)
    return {
        hashlib.sha256(dataset_bytes(ds)).hexdigest(): str(ds.SOPInstanceUID) for ds in generate_study(spec)
    }


def test_backend_client_fetches_whole_study_byte_identical(running: RunningStack) -> None:
    client = running.seeded.clients["quality-review"]
    with httpx.Client(timeout=60) as http:
        token = backend_token(running.fhir_base, client.backend, "system/ImagingStudy.rs", http)
        assert token["token_type"].lower() == "bearer"
        assert token["expires_in"] <= 300
        assert "refresh_token" not in token
        bundle = http.get(
            f"{running.fhir_base}/ImagingStudy",
            params={"patient": "alice", "_include": "ImagingStudy:endpoint"},
            headers={"Authorization": f"Bearer {token['access_token']}"},
        ).json()
        studies = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"]
        assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"ImagingStudy", "Endpoint"}
        ct = next(s for s in studies if any(i.get("value") == "ACC-1001" for i in s["identifier"]))
        assert study_uid(ct) == running.seeded.study_uids["ACC-1001"]
        received = {
            hashlib.sha256(part).hexdigest() for part in fetch_study(ct, bundle, token["access_token"], http)
        }
    expected = _expected("ACC-1001")
    assert received == set(expected)
    assert len(received) == ct["numberOfInstances"]


def test_patient_outside_the_group_is_refused(running: RunningStack) -> None:
    client = running.seeded.clients["quality-review"]
    bob_ct = running.seeded.study_uids["ACC-2002"]
    with httpx.Client(timeout=30) as http:
        token = backend_token(running.fhir_base, client.backend, "system/ImagingStudy.rs", http)[
            "access_token"
        ]
        auth = {"Authorization": f"Bearer {token}"}
        search = http.get(f"{running.fhir_base}/ImagingStudy", params={"patient": "bob"}, headers=auth)
        assert search.status_code == 403
        wado = http.get(
            f"{running.dicomweb_base}/studies/{bob_ct}",
            headers={**auth, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        unknown = http.get(
            f"{running.dicomweb_base}/studies/2.25.1234567890",
            headers={**auth, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
    assert wado.status_code == 404
    assert wado.content == unknown.content  # no existence oracle
    assert b"DICM" not in wado.content
