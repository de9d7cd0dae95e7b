"""Capability URLs (spec.md §1.7; IG rev. 3d82157b: ``requires-access-token = false``) against
the gate stack, where they are switched on."""

from __future__ import annotations

import time

import httpx
from tests.gate_stack import READ_ACCEPT, REVOCATION_WINDOW, GateStack
from tests.imaging.gate.uids import first_instance


def _issue(stack: GateStack, token: str, study: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.post(
            f"{stack.dicomweb_base}/studies/{study}/capability", headers={"Authorization": f"Bearer {token}"}
        )


def _follow(url: str) -> httpx.Response:
    with httpx.Client(timeout=30) as http:
        return http.get(url, headers={"Accept": READ_ACCEPT})  # no token: the URL is the capability


def test_capability_retrieves_its_study_and_paths_below_it(gate_stack: GateStack) -> None:
    alice = first_instance("ACC-1002")
    token = gate_stack.patient_token("alice")
    issued = _issue(gate_stack, token, alice.study)
    assert issued.status_code == 200
    assert issued.headers["cache-control"] == "no-store"
    url = issued.json()["url"]
    assert token not in url
    assert issued.json()["expires_at"] <= time.time() + 300
    study = _follow(url)
    assert study.status_code == 200
    assert b"DICM" in study.content
    instance = _follow(f"{url}/series/{alice.series}/instances/{alice.instance}")
    assert instance.status_code == 200
    assert token not in gate_stack.imaging_log()
    assert url.split("/cap/")[1].split("/")[0] not in gate_stack.imaging_log()


def test_capability_cannot_be_widened_or_tampered_with(gate_stack: GateStack) -> None:
    alice, bob = first_instance("ACC-1002"), first_instance("ACC-2001")
    url = _issue(gate_stack, gate_stack.patient_token("alice"), alice.study).json()["url"]
    other_study = url.replace(f"/studies/{alice.study}", f"/studies/{bob.study}")
    assert _follow(other_study).status_code == 403
    prefix, rest = url.split("/cap/")
    capability, path = rest.split("/", 1)
    flipped = capability[:10] + ("A" if capability[10] != "A" else "B") + capability[11:]
    for forged in (flipped, capability[:-4], "x" * 40):
        response = _follow(f"{prefix}/cap/{forged}/{path}")
        assert response.status_code == 403
        assert b"DICM" not in response.content
    assert _follow(f"{prefix}/studies/{alice.study}").status_code == 401  # the plain URL needs a token


def test_capability_is_only_issued_for_a_visible_study(gate_stack: GateStack) -> None:
    bob = first_instance("ACC-2001")
    response = _issue(gate_stack, gate_stack.patient_token("alice"), bob.study)
    assert response.status_code == 404


def test_capability_dies_with_its_token(gate_stack: GateStack) -> None:
    alice = first_instance("ACC-1002")
    token = gate_stack.patient_token("alice")
    url = _issue(gate_stack, token, alice.study).json()["url"]
    assert _follow(url).status_code == 200
    gate_stack.revoke(token)
    time.sleep(REVOCATION_WINDOW + 0.2)
    response = _follow(url)
    assert response.status_code == 403
    assert b"DICM" not in response.content


def test_capability_expires_no_later_than_its_token(gate_stack: GateStack) -> None:
    alice = first_instance("ACC-1002")
    token = gate_stack.patient_token("alice", lifetime=4)
    issued = _issue(gate_stack, token, alice.study).json()
    assert issued["expires_at"] <= time.time() + 4
    time.sleep(max(0.0, issued["expires_at"] - time.time()) + 0.5)
    assert _follow(issued["url"]).status_code == 403
