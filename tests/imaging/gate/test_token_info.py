"""The imaging grant's ``write`` member as the gate reads it (docs/gate.md "Writing"; ISO-08)."""

from __future__ import annotations

from typing import Any

import pytest

from imagebridge.imaging.gate.token_info import (
    IMAGING_GRANT,
    MalformedIntrospection,
    TokenInfo,
    WriteDecision,
    parse_introspection,
    parse_write_decision,
)


def _answer(write: Any = None, **grant: Any) -> dict[str, Any]:
    member = {"mode": "query", **grant}
    if write is not None:
        member["write"] = write
    return {"active": True, "exp": 2_000_000_000, "scope": "system/ImagingStudy.crs", IMAGING_GRANT: member}


def test_write_modes_are_read_and_survive_a_shared_cache() -> None:
    mrns = parse_introspection(_answer({"mode": "mrns", "mrns": ["MRN-A", "MRN-B"]}))
    assert (mrns.write_mode, mrns.write_mrns) == ("mrns", frozenset({"MRN-A", "MRN-B"}))
    assert TokenInfo.from_json(mrns.to_json()) == mrns
    assert parse_introspection(_answer({"mode": "any"})).write_mode == "any"
    assert parse_introspection(_answer({"mode": "ask"})).write_mode == "ask"
    assert parse_introspection(_answer()).write_mode is None  # no write member: writes for no one


@pytest.mark.parametrize(
    "write", [{"mode": "all"}, {}, "any", {"mode": "mrns", "mrns": "MRN-A"}, {"mode": "mrns", "mrns": [1]}]
)
def test_a_malformed_write_member_is_an_ehr_fault(write: Any) -> None:
    with pytest.raises(MalformedIntrospection):
        parse_introspection(_answer(write))


def test_write_decisions() -> None:
    asked = {"mode": "ask", "patient_id": "MRN-A"}
    assert parse_write_decision(_answer({**asked, "allowed": True}), "MRN-A")
    assert not parse_write_decision(_answer({**asked, "allowed": False}), "MRN-A")
    assert not parse_write_decision(_answer({**asked, "allowed": True}), "MRN-B")  # another question
    assert not parse_write_decision({"active": False}, "MRN-A")
    assert not parse_write_decision(_answer(), "MRN-A")
    assert parse_write_decision(_answer({"mode": "mrns", "mrns": ["MRN-A"]}), "MRN-A")
    with pytest.raises(MalformedIntrospection):
        parse_write_decision(_answer(asked), "MRN-A")


@pytest.mark.parametrize(
    ("decision", "patient_id", "answer"),
    [
        (WriteDecision("any"), "MRN-B", True),
        (WriteDecision("mrns", frozenset({"MRN-A"})), "MRN-A", True),
        (WriteDecision("mrns", frozenset({"MRN-A"})), "MRN-B", False),
        (WriteDecision("mrns"), "", False),  # a patient-context writer the policy lets write for no one
        (WriteDecision("ask"), "MRN-A", None),
        (WriteDecision(), "MRN-A", False),  # no write member: for no one, never for everyone
        (WriteDecision(), "", False),
        (WriteDecision("all"), "MRN-A", False),  # never parsed (an EHR fault), still no one
    ],
)
def test_write_decision_answers_yes_no_or_ask(
    decision: WriteDecision, patient_id: str, answer: bool | None
) -> None:
    assert decision.allows(patient_id) is answer
    assert decision.unlimited is (decision.mode == "any")


def test_an_answer_without_a_write_member_writes_for_no_one() -> None:
    parsed = parse_introspection(_answer())
    for info in (parsed, TokenInfo.from_json(parsed.to_json())):
        assert info.write == WriteDecision()
        assert not info.write.unlimited
        assert info.write.allows("MRN-A") is False
