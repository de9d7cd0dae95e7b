"""The request's EHR budget (:func:`request_budget`) counts overlapping waits once.

A QIDO-RS page asks the EHR about its study batches concurrently; the budget must spend the
wall-clock time during which any question was waiting, not the sum of the questions' times
(four overlapping 0.5 s answers cost 0.5 s of a 2 s budget, not all of it). Times are given
explicitly: nothing here sleeps.
"""

from __future__ import annotations

import pytest

from imagebridge.imaging.gate.ehr_client import _Budget


def test_overlapping_waits_are_counted_once() -> None:
    budget = _Budget(2.0)
    for _ in range(4):
        budget.enter(10.0)
    assert budget.left(10.3) == pytest.approx(2.0 - 0.3)
    for _ in range(4):
        budget.leave(10.5)
    assert budget.remaining == pytest.approx(1.5)
    assert budget.left(99.0) == pytest.approx(
        1.5
    )  # nothing is waiting: time between questions is not EHR time


def test_staggered_waits_count_the_union_of_their_spans() -> None:
    budget = _Budget(2.0)
    budget.enter(0.0)
    budget.enter(0.4)
    budget.leave(0.6)  # the first answer; the second still waits
    assert budget.left(0.8) == pytest.approx(2.0 - 0.8)
    budget.leave(1.0)
    budget.enter(5.0)  # a later question, after a pause that costs nothing
    budget.leave(5.25)
    assert budget.remaining == pytest.approx(2.0 - 1.0 - 0.25)


def test_sequential_waits_add_up() -> None:
    budget = _Budget(1.0)
    for start in (0.0, 1.0, 2.0):
        budget.enter(start)
        budget.leave(start + 0.5)
    assert budget.remaining == pytest.approx(-0.5)
    assert budget.left(3.0) < 0  # the next question gets no time at all
