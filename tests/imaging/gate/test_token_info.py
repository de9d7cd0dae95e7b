"""The imaging grant's ``write`` member as the gate reads it (docs/gate.md "Writing"; ISO-08)."""

from __future__ import annotations

from typing import Any

import pytest

from imagebridge.imaging.gate.token_info import (
    IMAGING_GRANT,
    MalformedIntrospection,
    TokenInfo,
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
