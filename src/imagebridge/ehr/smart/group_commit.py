"""Several requests' writes in one database transaction: one commit (one fsync) for the group.

Backend Services clients ask for tokens in bursts; each token is a ``jti`` record and a token row
that must be durable before the token is answered. With SQLite (``synchronous=FULL``) a commit
costs an fsync and commits are serialized, so one transaction per token caps a worker at one token
per fsync. Here each request queues its work; one task of the process runs everything queued in
one transaction, commits, and only then answers each request, then takes whatever arrived
meanwhile. Nothing is answered before its commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[Any]]


class GroupCommit:
    """Runs queued work in shared transactions; :meth:`run` returns once its work is committed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._queued: list[tuple[Work, asyncio.Future[Any]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work``'s result, after the transaction it ran in has committed.

        If any work of the group raises, the group's transaction is rolled back and every request in
        it gets that error.
        """
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queued.append((work, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return await asyncio.shield(done)  # a caller going away does not undo the group's commit

    async def _drain(self) -> None:
        while self._queued:
            group, self._queued = self._queued, []
            try:
                async with self.engine.begin() as conn:
                    results = [await work(conn) for work, _ in group]
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
