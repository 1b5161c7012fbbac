"""One blocking Milvus call for many waiting requests: the requests that arrive while a call
runs go together in the next one. Concurrent import calls then share their stored-row reads
and visibility checks, where each would otherwise cost the server a query of its own."""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, limit: int) -> None:
        self.limit = limit  # most requests in one call
        self.queue: list[tuple[T, asyncio.Future]] = []
        self.running = False

    def run(self, items: list[T]) -> list[R]:
        """The blocking call for ``items`` (in a worker thread): one result per item."""
        raise NotImplementedError

    def take(self) -> list[tuple[T, asyncio.Future]]:
        """The queued requests that go in the next call (the rest wait for the one after)."""
        batch, self.queue = self.queue[:self.limit], self.queue[self.limit:]
        return batch

    async def submit(self, item: T) -> R:
        future = asyncio.get_running_loop().create_future()
        self.queue.append((item, future))
        if not self.running:
            self.running = True
            asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            queued = -1
            while queued != len(self.queue) < self.limit:  # let the requests arriving together queue up
                queued = len(self.queue)
                await asyncio.sleep(0)
            while self.queue:
                batch = self.take()
                try:
                    results: list[Any] = await asyncio.to_thread(self.run, [item for item, _ in batch])
                except Exception as exc:  # every waiting request gets the error
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self.running = False
