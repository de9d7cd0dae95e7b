"""Reading ahead of the consumer (common/read_ahead.py): order, bound, errors, early stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from imagebridge.common.read_ahead import read_ahead


class Source:
    """Numbered items; records how far it was read and whether it was closed."""

    def __init__(self, count: int, fail_at: int | None = None) -> None:
        self.count = count
        self.fail_at = fail_at
        self.produced = 0
        self.closed = False

    async def items(self) -> AsyncIterator[int]:
        try:
            for n in range(self.count):
                if n == self.fail_at:
                    raise OSError("the disk went away")
                self.produced = n + 1
                yield n
                await asyncio.sleep(0)
        finally:
            self.closed = True


async def _items_come_in_order_and_all_of_them() -> None:
    source = Source(50)
    assert [n async for n in read_ahead(source.items(), 4)] == list(range(50))
    assert source.closed


async def _the_reader_runs_ahead_but_no_further_than_the_depth() -> None:
    source = Source(100)
    stream = read_ahead(source.items(), 4)
    assert await anext(stream) == 0
    for _ in range(20):
        await asyncio.sleep(0)
    # the consumer holds item 0; at most 4 wait in the queue and one more is being put
    assert 5 <= source.produced <= 6
    await stream.aclose()


async def _an_error_of_the_source_comes_after_the_items_before_it() -> None:
    source = Source(10, fail_at=3)
    got: list[int] = []

    async def consume() -> None:
        async for n in read_ahead(source.items(), 4):
            got.append(n)

    with pytest.raises(OSError, match="disk went away"):
        await consume()
    assert got == [0, 1, 2]


async def _a_consumer_that_stops_early_cancels_the_reader_and_closes_the_source() -> None:
    source = Source(1000)
    stream = read_ahead(source.items(), 2)
    assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
    await stream.aclose()
    await asyncio.sleep(0)
    assert source.closed
    assert source.produced < 10


def test_items_come_in_order_and_all_of_them() -> None:
    asyncio.run(_items_come_in_order_and_all_of_them())


def test_the_reader_runs_ahead_but_no_further_than_the_depth() -> None:
    asyncio.run(_the_reader_runs_ahead_but_no_further_than_the_depth())


def test_an_error_of_the_source_comes_after_the_items_before_it() -> None:
    asyncio.run(_an_error_of_the_source_comes_after_the_items_before_it())


def test_a_consumer_that_stops_early_cancels_the_reader_and_closes_the_source() -> None:
    asyncio.run(_a_consumer_that_stops_early_cancels_the_reader_and_closes_the_source())
