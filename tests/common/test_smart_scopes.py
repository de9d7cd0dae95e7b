"""Tests for imagebridge.common.smart_scopes (SMART App Launch 2.2 scopes, v1 and v2)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagebridge.common.smart_scopes import (
    LEVELS,
    InvalidScope,
    Scope,
    ScopeSet,
    covers_imaging_read,
    parse_scope,
    parse_scopes,
)


def scope(text: str) -> Scope:
    parsed = parse_scope(text)
    assert parsed is not None
    return parsed


# --- parse_scope --------------------------------------------------------------------------------


def test_v2_scope() -> None:
    s = scope("patient/ImagingStudy.rs")
    assert (s.level, s.resource_type, s.permissions, s.constraints) == (
        "patient",
        "ImagingStudy",
        frozenset("rs"),
        (),
    )
    assert s.to_string() == "patient/ImagingStudy.rs"


@pytest.mark.parametrize(("v1", "v2"), [("read", "rs"), ("write", "cud"), ("*", "cruds")])
def test_v1_mapping(v1: str, v2: str) -> None:
    old = scope(f"user/Observation.{v1}")
    assert old == scope(f"user/Observation.{v2}")
    assert old.permissions == frozenset(v2)
    assert old.to_string() == f"user/Observation.{v1}"


def test_wildcard_type_and_levels() -> None:
    for level in LEVELS:
        assert scope(f"{level}/*.cruds").resource_type == "*"


def test_granular_query() -> None:
    text = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    s = scope(text)
    assert s.constraints == (
        ("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
    )
    assert s.to_string() == text


def test_query_is_percent_decoded_and_order_insensitive() -> None:
    a = scope("patient/ImagingStudy.rs?modality=CT&_security=R")
    b = scope("patient/ImagingStudy.rs?_security=%52&modality=CT")
    assert a == b
    assert a.constraints == (("_security", "R"), ("modality", "CT"))
    assert b.to_string() == "patient/ImagingStudy.rs?_security=%52&modality=CT"


@pytest.mark.parametrize(
    "text",
    [
        "openid",
        "fhirUser",
        "launch",
        "launch/patient",
        "launch/encounter",
        "launch/imagingstudy",
        "offline_access",
        "online_access",
        "https://example.org/custom.scope",
    ],
)
def test_non_resource_scopes(text: str) -> None:
    assert parse_scope(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "patient/ImagingStudy.rsc",  # out of order
        "patient/ImagingStudy.sr",
        "patient/ImagingStudy.rr",  # repeated
        "patient/ImagingStudy.rx",  # unknown letter
        "patient/ImagingStudy.",  # empty
        "patient/ImagingStudy.READ",
        "patient/ImagingStudy.readwrite",
        "Patient/ImagingStudy.rs",  # bad level
        "admin/ImagingStudy.rs",
        "practitioner/*.read",
        "patient/imagingStudy.rs",  # resource types start upper-case
        "patient/ImagingStudy.read?modality=CT",  # v1 has no granular form
        "patient/ImagingStudy.rs?",
        "patient/ImagingStudy.rs?modality",
        "patient/ImagingStudy.rs?modality=",
        "patient/ImagingStudy.rs?=CT",
        "patient/ImagingStudy.rs?modality=CT&",
        'patient/ImagingStudy.rs?modality="CT"',  # not a scope-token character (RFC 6749 §3.3)
        "openid\n",
    ],
)
def test_malformed_resource_scopes(text: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scope(text)


def test_invalid_scope_is_value_error() -> None:
    assert issubclass(InvalidScope, ValueError)


def test_constructed_scope_is_validated() -> None:
    with pytest.raises(InvalidScope):
        Scope("patient", "ImagingStudy", frozenset("rx"))
    with pytest.raises(InvalidScope):
        Scope("patient", "ImagingStudy", frozenset())
    with pytest.raises(InvalidScope):
        Scope("clinic", "ImagingStudy", frozenset("r"))  # type: ignore[arg-type]


def test_canonical_rendering() -> None:
    s = Scope("system", "ImagingStudy", frozenset("sr"), (("modality", "CT MR"),))
    assert s.to_string() == "system/ImagingStudy.rs?modality=CT%20MR"
    assert Scope("user", "*", frozenset("rs"), v1=True).to_string() == "user/*.read"


# --- parse_scopes / ScopeSet ----------------------------------------------------------------------


def test_parse_scopes_splits_and_dedupes() -> None:
    ss = parse_scopes("launch/patient openid  fhirUser patient/*.read patient/*.rs offline_access openid")
    assert ss.resource_scopes == (scope("patient/*.rs"),)
    assert ss.resource_scopes[0].to_string() == "patient/*.read"
    assert ss.others == ("launch/patient", "openid", "fhirUser", "offline_access")
    assert ss.to_string() == "patient/*.read launch/patient openid fhirUser offline_access"


def test_parse_scopes_rejects_any_malformed_token() -> None:
    with pytest.raises(InvalidScope):
        parse_scopes("openid patient/ImagingStudy.sr")


def test_empty_scope_string() -> None:
    assert parse_scopes("") == ScopeSet()
    assert ScopeSet().to_string() == ""


def test_allows_returns_each_covering_scope() -> None:
    ss = parse_scopes(
        "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.r?modality=MR "
        "user/*.rs patient/Observation.rs"
    )
    covering = ss.allows({"patient"}, "ImagingStudy", "r")
    assert [s.to_string() for s in covering] == [
        "patient/ImagingStudy.rs?modality=CT",
        "patient/ImagingStudy.r?modality=MR",
    ]
    assert [s.to_string() for s in ss.allows({"patient"}, "ImagingStudy", "s")] == [
        "patient/ImagingStudy.rs?modality=CT"
    ]
    assert [s.to_string() for s in ss.allows({"patient", "user"}, "Patient", "s")] == ["user/*.rs"]
    assert ss.allows({"patient", "user"}, "ImagingStudy", "c") == []
    assert ss.allows({"system"}, "ImagingStudy", "r") == []


def test_covers_imaging_read() -> None:
    assert covers_imaging_read(parse_scopes("patient/ImagingStudy.rs"), "patient")
    assert covers_imaging_read(parse_scopes("patient/ImagingStudy.s"), "patient")
    assert covers_imaging_read(parse_scopes("user/*.read"), "user")
    assert covers_imaging_read(parse_scopes("system/ImagingStudy.rs?modality=CT"), "system")
    assert not covers_imaging_read(parse_scopes("patient/ImagingStudy.rs"), "user")
    assert not covers_imaging_read(parse_scopes("patient/Observation.rs openid"), "patient")
    assert not covers_imaging_read(parse_scopes("patient/ImagingStudy.cud"), "patient")


# --- narrowed_to ----------------------------------------------------------------------------------


def narrow(registered: str, requested: str) -> str:
    return parse_scopes(registered).narrowed_to(parse_scopes(requested)).to_string()


@pytest.mark.parametrize(
    ("registered", "requested", "granted"),
    [
        # Backend Services mediation (AS-30): wildcard request narrowed to what is pre-authorized.
        ("system/ImagingStudy.rs", "system/*.rs", "system/ImagingStudy.rs"),
        ("system/ImagingStudy.rs system/Patient.r", "system/*.rs", "system/ImagingStudy.rs system/Patient.r"),
        # A covered request keeps the client's own (v1) spelling.
        ("system/*.rs", "system/ImagingStudy.read", "system/ImagingStudy.read"),
        # A narrowed v1 request is answered in v1 where v1 can say it.
        ("system/ImagingStudy.rs", "system/*.read", "system/ImagingStudy.read"),
        ("system/ImagingStudy.r", "system/*.read", "system/ImagingStudy.r"),
        ("patient/*.cruds", "patient/ImagingStudy.rs?modality=CT", "patient/ImagingStudy.rs?modality=CT"),
        (
            "patient/ImagingStudy.rs?modality=CT",
            "patient/ImagingStudy.rs",
            "patient/ImagingStudy.rs?modality=CT",
        ),
        ("patient/Observation.r patient/Observation.s", "patient/Observation.rs", "patient/Observation.rs"),
        ("patient/ImagingStudy.rs", "user/ImagingStudy.rs", ""),
        ("patient/ImagingStudy.rs", "patient/Observation.rs", ""),
        ("patient/ImagingStudy.rs", "patient/ImagingStudy.cud", ""),
        # Refresh: scope broadening is impossible (AS-18), other tokens kept only if granted.
        (
            "patient/ImagingStudy.rs openid fhirUser",
            "patient/*.cruds offline_access openid",
            "patient/ImagingStudy.rs openid",
        ),
    ],
)
def test_narrowed_to(registered: str, requested: str, granted: str) -> None:
    assert narrow(registered, requested) == granted


def test_narrowing_keeps_separate_grants_separate() -> None:
    granted = parse_scopes(
        "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR"
    ).narrowed_to(parse_scopes("patient/*.rs"))
    assert granted.to_string() == "patient/ImagingStudy.rs?modality=CT patient/ImagingStudy.rs?modality=MR"


def test_narrowing_intersects_constraints() -> None:
    assert (
        narrow("patient/ImagingStudy.rs?modality=CT", "patient/ImagingStudy.r?_security=N")
        == "patient/ImagingStudy.r?_security=N&modality=CT"
    )


# --- properties ----------------------------------------------------------------------------------

_types = st.sampled_from(["*", "ImagingStudy", "Patient", "Observation"])
_perms = st.frozensets(st.sampled_from("cruds"), min_size=1)
_constraints = st.lists(
    st.tuples(
        st.sampled_from(["modality", "category", "_security"]), st.sampled_from(["CT", "a|b", "x y", "é%"])
    ),
    max_size=2,
).map(tuple)
scopes = st.builds(Scope, st.sampled_from(LEVELS), _types, _perms, _constraints, v1=st.booleans())
scope_sets = st.builds(
    ScopeSet,
    st.lists(scopes, max_size=5, unique=True).map(tuple),
    st.lists(st.sampled_from(["openid", "fhirUser", "launch/patient", "offline_access"]), unique=True).map(
        tuple
    ),
)


@given(scopes)
def test_scope_round_trip(s: Scope) -> None:
    assert parse_scope(s.to_string()) == s


@given(scope_sets)
def test_scope_set_round_trip(ss: ScopeSet) -> None:
    assert parse_scopes(ss.to_string()) == ss


@given(scope_sets)
def test_parsed_round_trip_is_byte_identical(ss: ScopeSet) -> None:
    text = parse_scopes(ss.to_string()).to_string()
    assert parse_scopes(text).to_string() == text


@given(scope_sets, scope_sets)
def test_narrowing_never_widens(registered: ScopeSet, requested: ScopeSet) -> None:
    # Each granted interaction, with the granted constraints, is covered by one registered scope and
    # by one requested scope (permissions with identical constraints may be merged: that is exact).
    granted = registered.narrowed_to(requested)
    for g in granted.resource_scopes:
        for p in g.permissions:
            single = Scope(g.level, g.resource_type, frozenset(p), g.constraints)
            assert any(r.covers(single) for r in registered.resource_scopes)
            assert any(q.covers(single) for q in requested.resource_scopes)
    assert set(granted.others) <= set(registered.others) & set(requested.others)


@given(scope_sets, scope_sets, st.sampled_from(LEVELS), _types, st.sampled_from("cruds"))
def test_narrowed_set_allows_only_what_both_allow(
    registered: ScopeSet, requested: ScopeSet, level: str, rtype: str, interaction: str
) -> None:
    granted = registered.narrowed_to(requested)
    if granted.allows({level}, rtype, interaction):  # type: ignore[arg-type]
        assert registered.allows({level}, rtype, interaction)  # type: ignore[arg-type]
        assert requested.allows({level}, rtype, interaction)  # type: ignore[arg-type]


@given(scope_sets)
def test_narrowing_to_itself_is_identity(ss: ScopeSet) -> None:
    assert ss.narrowed_to(ss).to_string() == ss.to_string()


@given(scope_sets, scope_sets)
def test_narrowing_is_idempotent(registered: ScopeSet, requested: ScopeSet) -> None:
    once = registered.narrowed_to(requested)
    assert registered.narrowed_to(once) == once
