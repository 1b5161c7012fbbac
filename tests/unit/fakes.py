"""In-memory stand-ins for the Triton client and the Milvus store, for unit tests of the
search and catalog logic only (the integration tests use the real servers)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from services.domain import REGION_LABEL, WHOLE_IMAGE_LABEL, ModelVersions
from services.search.backends import Store, Triton
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.milvus_store import Hit
from services.search.objects import Objects, photo, single

DIMENSION = 4
MODELS = ModelVersions("fake-detector", "d" * 64, "fake-embedder", "e" * 64, DIMENSION)


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, np.float32)
    return v / np.linalg.norm(v)


WHOLE = np.array([0, 0, 0, 1], np.float32)  # the whole photo's vector unless a test says otherwise


def objects(*items: tuple[str, float, np.ndarray], whole: np.ndarray = WHOLE) -> Objects:
    """Detections: (label, score, embedding) each, boxes 10 px apart; and the whole photo."""
    return photo(boxes=np.array([[i * 10, 0, i * 10 + 8, 8] for i in range(len(items))], np.float32).reshape(-1, 4),
                 scores=np.array([s for _, s, _ in items], np.float32), labels=[lab for lab, _, _ in items],
                 embeddings=np.array([e for _, _, e in items], np.float32).reshape(-1, DIMENSION),
                 whole_box=np.array([0, 0, 100, 80], np.float32), whole_embedding=whole)


class FakeTriton(Triton):
    """Answers for the image bytes it was told about; any other bytes are an invalid image."""

    def __init__(self) -> None:
        self.detections: dict[bytes, Objects] = {}
        self.whole: dict[bytes, np.ndarray] = {}  # image -> embedding of the whole image / any region
        self.down = False
        self.gate: asyncio.Event | None = None  # when set, every call waits for it
        self.calls: list[tuple[str, bytes, Any]] = []

    async def _enter(self, what: str, image: bytes, arg: Any = None) -> None:
        self.calls.append((what, image, arg))
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise BackendUnavailable("Triton at fake is unavailable or failing: down")

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None,
                               max_objects: int | None = None, min_score: float = 0.0) -> Objects:
        await self._enter("detect", image, (max_objects, min_score))
        if image not in self.detections:
            raise InvalidInput("invalid image: image bytes are not a decodable image")
        found = self.detections[image]
        # as the ensemble does: its first max_objects boxes (the postprocess's best) from
        # min_score, then the whole image
        boxes = [int(i) for i in np.flatnonzero(found.detected) if found.scores[i] >= min_score][:max_objects]
        return found.take(boxes + [int(i) for i in np.flatnonzero(~found.detected)])

    async def embed_region(self, image: bytes, region: tuple | None, remaining_s: float | None = None
                           ) -> Objects:
        await self._enter("region", image, region)
        if image not in self.whole:
            raise InvalidInput("invalid image: image bytes are not a decodable image")
        box = region or (0.0, 0.0, 100.0, 80.0)
        return single(np.asarray(box, np.float32), self.whole[image], REGION_LABEL if region else WHOLE_IMAGE_LABEL)

    async def probe(self) -> None:
        if self.down:
            raise BackendUnavailable("down")

    async def model_versions(self) -> ModelVersions:
        return MODELS

    async def close(self) -> None:
        pass


class FakeStore(Store):
    """Rows by primary key; search is exact inner product; filters are recorded, not applied."""

    collection = "products"
    mode = "fake"

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.dimension: int | None = None
        self.expressions: list[str] = []
        self.visible_waits: list[dict[str, set[str]]] = []
        self.seals = 0
        self.reads = 0
        self.vector_reads: list[list[str]] = []  # the keys of each vectors() call
        self.read_seconds = 0.0  # how long a read takes (a Milvus query takes milliseconds)
        self.writes: list[list[str]] = []  # the products of each replace_products call

    def connect(self, models: ModelVersions) -> None:
        self.dimension = models.dimension

    def ping(self, models: ModelVersions) -> None:
        self.connect(models)

    def disconnect(self) -> None:
        pass

    def search(self, vectors: np.ndarray, limit: int, expression: str) -> list[list[Hit]]:
        self.expressions.append(expression)
        rows = list(self.rows.values())
        out = []
        for v in vectors:
            hits = sorted((Hit(float(np.dot(v, row["vector"])), row) for row in rows), key=lambda h: -h.similarity)
            out.append(hits[:limit])
        return out

    def product_rows(self, product_ids: list[str]) -> list[dict[str, Any]]:
        self.reads += 1
        time.sleep(self.read_seconds)
        return [{k: v for k, v in r.items() if k != "vector"} for r in self.rows.values()
                if r["product_id"] in product_ids]

    def vectors(self, keys: list[str]) -> dict[str, Any]:
        self.vector_reads.append(list(keys))
        return {pk: list(self.rows[pk]["vector"]) for pk in keys if pk in self.rows}

    def replace_products(self, rows_by_product: dict[str, list[dict[str, Any]]],
                         stale_keys: list[str]) -> dict[str, set[str]]:
        self.writes.append(sorted(rows_by_product))
        for rows in rows_by_product.values():
            # stored as Milvus returns them: vectors as lists of floats
            self.rows.update({row["pk"]: {**row, "vector": [float(x) for x in row["vector"]]} for row in rows})
        for pk in stale_keys:
            self.rows.pop(pk, None)
        return {pid: {row["pk"] for row in rows} for pid, rows in rows_by_product.items()}

    def delete_products(self, product_ids: list[str]) -> int:
        doomed = [pk for pk, r in self.rows.items() if r["product_id"] in product_ids]
        for pk in doomed:
            del self.rows[pk]
        return len(doomed)

    def seal(self) -> None:
        self.seals += 1

    def wait_visible(self, expected: dict[str, set[str]]) -> None:
        self.visible_waits.append(expected)

    def stats(self) -> dict[str, Any]:
        rows = self.rows.values()
        return {"products": sum(bool(r["product_head"]) for r in rows),
                "images": sum(bool(r["image_head"]) for r in rows), "vectors": len(self.rows),
                "index_type": "FLAT", "index_state": "Finished",
                "indexed_vectors": len(self.rows)}
