"""Reading a response body ahead of the socket it goes to, within a fixed number of pieces.

A streamed body alternates two waits: producing the next piece (a blob read in a worker thread,
an upstream PACS's socket) and handing the last one to the caller's socket. :func:`read_ahead`
runs the producing side in its own task so that the two overlap, holding at most ``depth``
pieces: memory stays bounded whatever the body's size (ARCHITECTURE.md "Streaming everywhere").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class _End:
    """The source is exhausted (or failed: the reader task then holds the exception)."""


_END = _End()


async def read_ahead(source: AsyncIterator[T], depth: int) -> AsyncIterator[T]:
    """``source``'s items, produced up to ``depth`` ahead of the consumer in a separate task.

    An exception raised by ``source`` ends the consumer's loop and is raised there, after the
    items before it; a consumer that stops early (a caller gone) cancels the reader.
    """
    ahead: asyncio.Queue[T | _End] = asyncio.Queue(depth)

    async def read() -> None:
        try:
            async for item in source:
                await ahead.put(item)
        except asyncio.CancelledError:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()  # a blob's file is closed now, not when collected
            raise
        except BaseException:
            await ahead.put(_END)  # the consumer's loop ends and ``await reader`` raises it
            raise
        await ahead.put(_END)

    reader = asyncio.create_task(read())
    try:
        while not isinstance(item := await ahead.get(), _End):
            yield item
        await reader  # raises what the source raised
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
