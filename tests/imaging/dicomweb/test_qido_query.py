"""QIDO-RS query parameters (PS3.18 §8.3.4): attribute names, control parameters, clear 400s."""

from __future__ import annotations

import pytest

from imagebridge.imaging.dicomweb.qido_match import QueryError
from imagebridge.imaging.dicomweb.qido_query import DEFAULT_LIMIT, MAXIMUM_LIMIT, parse, resolve


def test_keywords_tags_and_sequence_paths_resolve() -> None:
    assert resolve("PatientID") == "00100020"
    assert resolve("00100020") == "00100020"
    assert resolve("0020000d") == "0020000D"
    assert resolve("RequestAttributesSequence.RequestedProcedureID") == "00400275.00401001"
    assert resolve("00400275.00400009") == "00400275.00400009"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("PatientNmae=X", "unknown attribute 'PatientNmae'"),
        ("00990010=X", "not a matching key"),
        ("12345678=X", "unknown attribute"),
        ("Manufacturer=X", "not a matching key"),
        ("Modality=CT", "series-level attribute"),
        ("SOPInstanceUID=1.2", "instance-level attribute"),
        ("PatientID=A&00100020=B", "more than once"),
        ("limit=abc", "limit must be a non-negative integer"),
        ("limit=0", "at least 1"),
        ("offset=-1", "offset must be a non-negative integer"),
        ("fuzzymatching=yes", "true or false"),
        ("includefield=NoSuchKeyword", "unknown attribute"),
    ],
)
def test_bad_parameters_are_400_with_a_clear_message(query: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(query, "study", allowed_levels=("study",))
    assert caught.value.status == 400
    assert message in caught.value.message


def test_control_parameters() -> None:
    query = parse(
        "includefield=StudyDescription,00081032&includefield=all&limit=5&offset=10&fuzzymatching=TRUE",
        "study",
        allowed_levels=("study",),
    )
    assert query.include_tags == {"00081030", "00081032"}
    assert query.include_all
    assert query.fuzzy
    assert (query.limit, query.offset, query.limit_reduced) == (5, 10, False)
    assert parse("", "study", allowed_levels=("study",)).limit == DEFAULT_LIMIT
    big = parse(f"limit={MAXIMUM_LIMIT + 1}", "study", allowed_levels=("study",))
    assert (big.limit, big.limit_reduced) == (MAXIMUM_LIMIT, True)


def test_higher_level_keys_are_allowed_at_lower_levels() -> None:
    query = parse(
        "PatientID=X&Modality=CT&SOPClassUID=1.2&RequestAttributesSequence.RequestedProcedureID=R1",
        "instance",
        allowed_levels=("study", "series", "instance"),
    )
    assert [f.key.keyword for f in query.filters][:3] == ["PatientID", "Modality", "SOPClassUID"]
    assert query.matched_tags == {"00100020", "00080060", "00080016", "00400275"}


def test_values_are_percent_decoded_once_and_plus_is_space() -> None:
    query = parse(
        "PatientName=Doe%5EJane%2A&PatientID=P%2530&StudyDescription=a+b", "study", allowed_levels=("study",)
    )
    assert [f.value for f in query.filters] == ["Doe^Jane*", "P%30", "a b"]
