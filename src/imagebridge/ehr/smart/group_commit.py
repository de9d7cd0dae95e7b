"""Several requests' writes in one database transaction: one commit (one fsync) for the group.

Backend Services clients ask for tokens in bursts; each token is a ``jti`` record and a token row
that must be durable before the token is answered. With SQLite (``synchronous=FULL``) a commit
costs an fsync and commits are serialized, so one transaction per token caps a worker at one token
per fsync. Here each request queues its item; one task of the process applies everything queued
in one transaction (a few statements for the whole group, not a few per request), commits, and
only then answers each request, then takes whatever arrived meanwhile. Nothing is answered before
its commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
R = TypeVar("R")
#: Applies a group's items in its transaction: one result per item, in order.
Apply = Callable[[AsyncConnection, list[T]], Awaitable[list[R]]]


class GroupCommit(Generic[T, R]):
    """Applies queued items in shared transactions; :meth:`run` returns once its item is committed."""

    def __init__(self, engine: AsyncEngine, apply: Apply[T, R]) -> None:
        self.engine = engine
        self.apply = apply
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def run(self, item: T) -> R:
        """``item``'s result, after the transaction it was applied in has committed.

        If applying a group raises, the group's transaction is rolled back and every request in it
        gets that error.
        """
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(done)  # a caller going away does not undo the group's commit

    async def _drain(self) -> None:
        while self._queued:
            group, self._queued = self._queued, []
            try:
                async with self.engine.begin() as conn:
                    results = await self.apply(conn, [item for item, _ in group])
            except Exception as exc:  # handed to every request of the group
                for _, done in group:
                    if not done.done():
                        done.set_exception(exc)
                continue
            except asyncio.CancelledError:  # the process is stopping: nothing of the group was answered
                for _, done in group:
                    done.cancel()
                raise
            for (_, done), result in zip(group, results, strict=True):
                if not done.done():
                    done.set_result(result)
