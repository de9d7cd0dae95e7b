"""Tests for imagebridge.imaging.dicomweb.uids (PS3.5 §9.1, PS3.18 §8.3.4.1)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagebridge.imaging.dicomweb.uids import InvalidUID, is_valid_uid, parse_uid_list, validate_uid


@pytest.mark.parametrize(
    "uid",
    ["0", "1", "1.2", "1.2.840.10008.1.2.1", "2.25.0", "1.0.0.0", "1." + "2" * 62, "9" * 64],
)
def test_valid(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    ("uid", "reason"),
    [
        ("", "empty value"),
        ("1." + "2" * 63, "65 characters"),
        ("1.2a", "character 'a'"),
        ("1.02", "component '02' has a leading zero"),
        ("00", "component '00' has a leading zero"),
        ("1..2", "empty component"),
        ("1.2.", "empty component"),
        (".1", "empty component"),
        ("../x", "character '/'"),
        ("/abs", "character '/'"),
        ("1\\2", "character '\\\\'"),
        ("1.2\x00", "character '\\x00'"),
        ("1;rm", "character ';'"),
        ("1`$()", "character '`'"),
        ("1.2 ", "character ' '"),
        ("1.2\n", "character '\\n'"),
        ("١.٢", "character '١'"),  # Arabic-Indic digits are not ASCII digits
        ("-1", "character '-'"),
    ],
)
def test_invalid_with_reason(uid: str, reason: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUID, match="invalid UID") as caught:
        validate_uid(uid)
    assert reason in str(caught.value)


def test_long_value_is_truncated_in_message() -> None:
    with pytest.raises(InvalidUID) as caught:
        validate_uid("1" * 10_000)
    assert len(str(caught.value)) < 200


def test_invalid_uid_is_value_error() -> None:
    assert issubclass(InvalidUID, ValueError)


@given(st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=8))
def test_components_round_trip(components: list[int]) -> None:
    uid = ".".join(map(str, components))
    assert is_valid_uid(uid) == (len(uid) <= 64)


@given(st.text(max_size=70))
def test_never_raises_and_agrees_with_validate(s: str) -> None:
    if is_valid_uid(s):
        assert validate_uid(s) == s
    else:
        with pytest.raises(InvalidUID):
            validate_uid(s)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.3", ["1.2.3"]),
        ("1.2.3,1.2.4", ["1.2.3", "1.2.4"]),
        ("1.2.3\\1.2.4", ["1.2.3", "1.2.4"]),
        ("1.2.3,1.2.4\\1.2.5", ["1.2.3", "1.2.4", "1.2.5"]),
        ("1.2.4,1.2.3,1.2.4", ["1.2.4", "1.2.3"]),
    ],
)
def test_parse_uid_list(value: str, expected: list[str]) -> None:
    assert parse_uid_list(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "item 1 '': empty value"),
        ("1.2,", "item 2 '': empty value"),
        ("1.2,,1.3", "item 2"),
        ("1.2, 1.3", "item 2 ' 1.3'"),
        ("1.2,1.03", "item 2 '1.03': component '03' has a leading zero"),
    ],
)
def test_parse_uid_list_rejects(value: str, message: str) -> None:
    with pytest.raises(InvalidUID, match="invalid UID list") as caught:
        parse_uid_list(value)
    assert message in str(caught.value)
