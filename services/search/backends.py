"""The service's two dependencies, injected: the Triton client and the Milvus store (each
described by a Protocol that the real class and the unit tests' fakes implement), plus what is
learnt from Triton at connect time (which models answer, what they recommend), and ``timed``:
the one place a backend call meets the caller's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import numpy as np

from services.domain import ModelVersions
from services.search.errors import BackendUnavailable, DeadlineExceeded, ServiceError
from services.search.objects import Objects

log = logging.getLogger(__name__)

T = TypeVar("T")
Remaining = Callable[[], float | None]  # seconds left of the caller's deadline (None: no deadline)


class Triton(Protocol):
    """What the service calls on Triton (``triton_client.TritonClient``)."""

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None,
                               max_objects: int | None = None, min_score: float = 0.0) -> Objects: ...

    async def embed_region(self, image: bytes, region: tuple[float, float, float, float] | None,
                           remaining_s: float | None = None) -> Objects: ...

    async def probe(self) -> None: ...

    async def model_versions(self) -> ModelVersions: ...

    async def close(self) -> None: ...


class Store(Protocol):
    """What the service calls on Milvus (``milvus_store.MilvusStore``)."""

    dimension: int | None
    collection: str

    @property
    def mode(self) -> str: ...

    def ping(self, models: ModelVersions) -> None: ...

    def disconnect(self) -> None: ...

    def search(self, vectors: np.ndarray, limit: int, expression: str) -> list[list[Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def product_rows(self, product_ids: list[str]) -> list[dict[str, Any]]: ...

    def vectors(self, keys: list[str]) -> dict[str, Any]: ...

    def replace_products(self, rows_by_product: dict[str, list[dict[str, Any]]],
                         stale_keys: list[str]) -> dict[str, set[str]]: ...

    def delete_products(self, product_ids: list[str]) -> int: ...

    def seal(self) -> None: ...

    def wait_visible(self, expected: dict[str, set[str]]) -> None: ...


class Backends:
    def __init__(self, triton: Triton, store: Store) -> None:
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
