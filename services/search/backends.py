"""The service's two dependencies, injected: the Triton client and the Milvus store, plus
what is learnt from Triton at connect time (which models answer, their vector dimension).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from services.search.errors import BackendUnavailable, DeadlineExceeded, ServiceError
from services.search.milvus_store import MilvusStore
from services.search.triton_client import ModelVersions, TritonClient

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backends:
    def __init__(self, triton: TritonClient, store: MilvusStore) -> None:
        self.triton = triton
        self.store = store
        self.models: ModelVersions | None = None

    async def probe(self) -> dict[str, str | None]:
        """Real checks of both dependencies (a tiny inference, a Milvus query), connecting
        whatever is not connected yet. Returns the problem per dependency, None when fine."""
        problems: dict[str, str | None] = {"triton": None, "milvus": None}
        try:
            await self.triton.probe()
            if self.models is None:
                self.models = await self.triton.model_versions()
                log.info("models", extra={"detector": self.models.detector, "embedder": self.models.embedder,
                                          "dimension": self.models.dimension})
        except ServiceError as exc:
            problems["triton"] = str(exc)
        if self.models is None:
            problems["milvus"] = "not connected: the embedding dimension comes from Triton, which is down"
            return problems
        try:
            await asyncio.to_thread(self.store.ping, self.models)
        except ServiceError as exc:
            problems["milvus"] = str(exc)
        return problems

    def ready(self) -> ModelVersions:
        """The served models; UNAVAILABLE until the first successful probe."""
        if self.models is None or self.store.dimension is None:
            raise BackendUnavailable("the service is not connected to Triton and Milvus yet")
        return self.models

    async def close(self) -> None:
        await self.triton.close()
        self.store.disconnect()


async def timed(histogram_child: Any, awaitable: Awaitable[T], remaining_s: float | None) -> T:
    """Await a backend call within the caller's remaining deadline, recording its latency."""
    start = time.perf_counter()
    try:
        if remaining_s is None:
            return await awaitable
        if remaining_s <= 0:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: close it so it does not warn
            raise DeadlineExceeded("deadline exceeded")
        try:
            return await asyncio.wait_for(awaitable, remaining_s)
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded while waiting for a backend") from None
    finally:
        histogram_child.observe(time.perf_counter() - start)
