"""QIDO-RS matching rules (PS3.4 §C.2.2.2) evaluated by a real SQLite database and compiled for
PostgreSQL; every rule of qido_match has a case here."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, insert, select
from sqlalchemy.dialects import postgresql

from imagebridge.imaging.dicomweb.qido_match import QueryError, fold_person_name, wildcard
from imagebridge.imaging.dicomweb.qido_query import parse
from imagebridge.imaging.tables import metadata, series, series_requests, studies

ROWS = [
    ("1.2.1", "MRN-1", "Anders^Alice", "20240312", "101500", "ACC-1001", "CT"),
    ("1.2.2", "MRN-1", "Anders^Alice", "20240520", "083000.25", "ACC-1002", "MR"),
    ("1.2.3", "MRN-2", "Baker^Bob", "20240115", "230000", "ACC-2001", "DX"),
    ("1.2.4", "MRN-3", "Moreno^Maya", "20241002", "", "acc-3002", "US"),
    ("1.2.5", "P%30", "Ørsted^Zoë", "", "120000", "A_B", "MR"),
    ("1.2.6", "P0", "van der Berg^Jan Willem", "20231231", "000000", "X*Y", "CT"),
]


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        for uid, pid, name, date, time, acc, modality in ROWS:
            conn.execute(
                insert(studies).values(
                    study_uid=uid,
                    patient_id=pid,
                    patient_name=name,
                    patient_name_fold=fold_person_name(name),
                    study_date=date,
                    study_time=time,
                    accession_number=acc,
                    study_json=b"{}",
                    updated_at=0.0,
                )
            )
            conn.execute(
                insert(series).values(
                    series_uid=f"{uid}.1", study_uid=uid, modality=modality, series_json=b"{}"
                )
            )
            if uid == "1.2.2":
                conn.execute(
                    insert(series).values(
                        series_uid=f"{uid}.2", study_uid=uid, modality="SR", series_json=b"{}"
                    )
                )
    yield engine
    engine.dispose()


def found(engine: Engine, query: str) -> list[str]:
    conditions = parse(query, "study", allowed_levels=("study",)).conditions()
    with engine.connect() as conn:
        rows = conn.execute(select(studies.c.study_uid).where(*conditions).order_by(studies.c.study_uid))
        return [r[0] for r in rows]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # universal matching: empty value or a lone '*'
        ("PatientID=", ["1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5", "1.2.6"]),
        ("AccessionNumber=*", ["1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5", "1.2.6"]),
        # single value: exact and case-sensitive
        ("PatientID=MRN-1", ["1.2.1", "1.2.2"]),
        ("AccessionNumber=ACC-3002", []),
        ("AccessionNumber=acc-3002", ["1.2.4"]),
        ("PatientName=Anders%5EAlice", ["1.2.1", "1.2.2"]),
        ("PatientName=anders%5Ealice", []),
        # wild cards: * and ?, case-sensitive, SQL specials are literal
        ("PatientName=An*", ["1.2.1", "1.2.2"]),
        ("PatientName=%2A%5EB%3Fb", ["1.2.3"]),
        ("PatientName=an*", []),
        ("AccessionNumber=A_*", ["1.2.5"]),
        ("AccessionNumber=A%25*", []),
        ("AccessionNumber=ACC-100?", ["1.2.1", "1.2.2"]),
        ("AccessionNumber=X[*", []),
        # percent-decoded exactly once: %2530 is the three characters "%30"
        ("PatientID=P%2530", ["1.2.5"]),
        ("PatientID=P%30", ["1.2.6"]),
        # UID lists
        ("StudyInstanceUID=1.2.1,1.2.3", ["1.2.1", "1.2.3"]),
        ("0020000D=1.2.4%5C1.2.9", ["1.2.4"]),
        ("StudyInstanceUID=1.2.3", ["1.2.3"]),
        # date ranges: a-b, -b, a-, single date; empty dates never match a range
        ("StudyDate=20240101-20240531", ["1.2.1", "1.2.2", "1.2.3"]),
        ("StudyDate=-20240115", ["1.2.3", "1.2.6"]),
        ("StudyDate=20240601-", ["1.2.4"]),
        ("StudyDate=20240312", ["1.2.1"]),
        # time ranges, partial upper bounds include the whole hour
        ("StudyTime=080000-1015", ["1.2.1", "1.2.2"]),
        ("StudyTime=22-", ["1.2.3"]),
        ("StudyTime=-00", ["1.2.6"]),
        # ModalitiesInStudy: any of a list
        ("ModalitiesInStudy=MR", ["1.2.2", "1.2.5"]),
        ("ModalitiesInStudy=SR,DX", ["1.2.2", "1.2.3"]),
        ("00080061=CT%5CUS", ["1.2.1", "1.2.4", "1.2.6"]),
        # several keys combine with AND
        ("PatientID=MRN-1&StudyDate=20240501-", ["1.2.2"]),
    ],
)
def test_matching(engine: Engine, query: str, expected: list[str]) -> None:
    assert found(engine, query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=anders&fuzzymatching=true", ["1.2.1", "1.2.2"]),
        ("PatientName=ALI&fuzzymatching=true", ["1.2.1", "1.2.2"]),
        ("PatientName=al%5Eand&fuzzymatching=true", ["1.2.1", "1.2.2"]),  # any order
        ("PatientName=orsted%20zoe&fuzzymatching=true", ["1.2.5"]),  # accents folded
        ("PatientName=Zo%C3%AB&fuzzymatching=true", ["1.2.5"]),
        ("PatientName=berg%5Ewill&fuzzymatching=true", ["1.2.6"]),  # words inside components
        ("PatientName=ders&fuzzymatching=true", []),  # prefixes of words, not substrings
        ("PatientName=bak*&fuzzymatching=true", ["1.2.3"]),
        ("PatientName=bak*&fuzzymatching=false", []),
    ],
)
def test_fuzzy_person_names(engine: Engine, query: str, expected: list[str]) -> None:
    assert found(engine, query) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("StudyDate=2024*", "not a DA value or range"),
        ("StudyDate=2024-01-01", "not a DA value or range"),
        ("StudyDate=-", "at least one bound"),
        ("StudyTime=25:00", "not a TM value"),
        ("StudyInstanceUID=1.2.*", "wild cards are not allowed for UIDs"),
        ("StudyInstanceUID=1.02", "leading zero"),
        ("ModalitiesInStudy=C*", "wild cards are not supported"),
    ],
)
def test_bad_values_are_400(query: str, message: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(query, "study", allowed_levels=("study",)).conditions()
    assert caught.value.status == 400
    assert message in caught.value.message


def test_fold_person_name() -> None:
    assert fold_person_name("Ånders^Alíce=安德斯^爱丽丝") == " anders alice "
    assert fold_person_name("") == ""
    assert fold_person_name("STRASSE^Groß") == " strasse gross "


def test_wildcard_is_case_sensitive_like_on_postgresql() -> None:
    compiled = wildcard(studies.c.patient_name, "a%_\\*?").compile(dialect=postgresql.dialect())
    assert " LIKE " in str(compiled)
    assert str(compiled).endswith("ESCAPE '\\'")
    assert "a\\%\\_\\\\%_" in compiled.params.values()


def test_request_attributes_sequence_matching(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(series_requests),
            [
                {
                    "series_uid": "1.2.1.1",
                    "scheduled_procedure_step_id": "SPS-1",
                    "requested_procedure_id": "RP-1",
                },
                {
                    "series_uid": "1.2.1.1",
                    "scheduled_procedure_step_id": "SPS-2",
                    "requested_procedure_id": "RP-2",
                },
                {
                    "series_uid": "1.2.3.1",
                    "scheduled_procedure_step_id": "SPS-3",
                    "requested_procedure_id": "RP-3",
                },
            ],
        )

    def series_found(query: str) -> list[str]:
        conditions = parse(query, "series", allowed_levels=("study", "series")).conditions()
        with engine.connect() as conn:
            rows = conn.execute(select(series.c.series_uid).where(*conditions).order_by(series.c.series_uid))
            return [r[0] for r in rows]

    assert series_found("RequestAttributesSequence.RequestedProcedureID=RP-2") == ["1.2.1.1"]
    assert series_found("00400275.00400009=SPS-*") == ["1.2.1.1", "1.2.3.1"]
    assert series_found("RequestAttributesSequence.ScheduledProcedureStepID=SPS-9") == []
    assert len(series_found("RequestAttributesSequence.RequestedProcedureID=")) == 7  # universal
    assert series_found("Modality=MR&00400275.00401001=RP-1") == []
