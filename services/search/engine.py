"""What the API does: search a photo, import and delete products, report stats.

One Triton ensemble call per image, then one Milvus search for all objects of the photo
(nq = objects). Milvus writes are serialised by one lock (Milvus Lite wants a single
writer; for a server it keeps each product's upsert+delete pair ordered).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import numpy as np

from services.api import pb
from services.search import metrics
from services.search.catalog_store import CatalogStore, Hit, row_key
from services.search.config import Settings
from services.search.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ServiceError
from services.search.filters import MAX_VALUE_LENGTH, build_expression, check_id, check_key, check_value
from services.search.inference import InferenceClient, ModelVersions

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTRIBUTES = 32
MAX_DELETE_IDS = 1000
REGION_LABEL = "region"


def _box(values: Any) -> pb.BoundingBox:
    x1, y1, x2, y2 = (float(v) for v in values)
    return pb.BoundingBox(x_min=x1, y_min=y1, x_max=x2, y_max=y2)


def _box_fields(values: Any) -> dict[str, float]:
    """A box as a JSON object for Milvus (Milvus 2.3 JSON fields must be objects)."""
    x1, y1, x2, y2 = (float(v) for v in values)
    return {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2}


def _region(box: pb.BoundingBox, what: str) -> tuple[float, float, float, float]:
    coords = (box.x_min, box.y_min, box.x_max, box.y_max)
    if not all(math.isfinite(c) for c in coords):
        raise InvalidInput(f"{what} has a non-finite coordinate")
    if box.x_max <= box.x_min or box.y_max <= box.y_min or box.x_max <= 0 or box.y_max <= 0:
        raise InvalidInput(f"{what} must satisfy x_max > x_min and y_max > y_min (original pixels), got "
                           f"({box.x_min}, {box.y_min}, {box.x_max}, {box.y_max})")
    return coords


class Engine:
    def __init__(self, settings: Settings, inference: InferenceClient) -> None:
        self.settings = settings
        self.inference = inference
        self.store: CatalogStore | None = None
        self.models: ModelVersions | None = None
        self._write_lock = asyncio.Lock()

    # -- dependencies ---------------------------------------------------------------------
    async def probe(self) -> dict[str, str | None]:
        """Real checks of both dependencies (a tiny inference, a Milvus query), connecting
        whatever is not connected yet. Returns the problem per dependency, None when fine."""
        problems: dict[str, str | None] = {"triton": None, "milvus": None}
        try:
            await self.inference.probe()
            if self.models is None:
                self.models = await self.inference.model_versions()
                log.info("models", extra={"detector": self.models.detector, "embedder": self.models.embedder,
                                          "dimension": self.models.dimension})
        except ServiceError as exc:
            problems["triton"] = str(exc)
        if self.models is None:
            problems["milvus"] = "not connected: the embedding dimension comes from Triton, which is down"
            return problems
        if self.store is None:
            self.store = CatalogStore(self.settings, self.models.dimension)
        try:
            await asyncio.to_thread(self.store.ping)
        except ServiceError as exc:
            problems["milvus"] = str(exc)
        return problems

    def _store(self) -> CatalogStore:
        if self.store is None or self.models is None:
            raise BackendUnavailable("the service is not connected to Triton and Milvus yet")
        return self.store

    async def _timed(self, histogram_child: Any, awaitable: Awaitable[T], remaining_s: float | None) -> T:
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

    def _model_info(self) -> pb.ModelInfo:
        m = self.models
        return pb.ModelInfo(detector=m.detector, detector_sha256=m.detector_sha256, embedder=m.embedder,
                            embedder_sha256=m.embedder_sha256, embedding_dimension=m.dimension)

    def _check_image(self, data: bytes, what: str) -> None:
        if not data:
            raise InvalidInput(f"{what} is empty")
        if len(data) > self.settings.max_image_bytes:
            raise InvalidInput(f"{what} is {len(data)} bytes, above the limit of "
                               f"{self.settings.max_image_bytes} bytes (VS_MAX_IMAGE_BYTES)")

    # -- search ---------------------------------------------------------------------------
    async def search(self, req: pb.SearchByImageRequest,
                     remaining: Callable[[], float | None]) -> pb.SearchByImageResponse:
        store = self._store()
        self._check_image(req.image, "image")
        top_k = req.top_k or self.settings.default_top_k
        if not 1 <= top_k <= self.settings.max_top_k:
            raise InvalidInput(f"top_k must be 1..{self.settings.max_top_k}, got {req.top_k}")
        if req.max_objects < 0:
            raise InvalidInput(f"max_objects must be >= 0, got {req.max_objects}")
        if not 0 <= req.min_detection_score <= 1:
            raise InvalidInput(f"min_detection_score must be 0..1, got {req.min_detection_score}")
        if not -1 <= req.min_similarity <= 1:
            raise InvalidInput(f"min_similarity must be -1..1, got {req.min_similarity}")
        expression = build_expression(req.filter)

        whole_image = False
        if req.HasField("region"):
            region = _region(req.region, "region")
            embeddings, boxes = await self._timed(
                metrics.TRITON_SECONDS.labels("embed_region"),
                self.inference.embed_region(req.image, region, remaining()), remaining())
            objects = [(boxes[0], REGION_LABEL, 0.0)]
        else:
            found = await self._timed(metrics.TRITON_SECONDS.labels("detect_and_embed"),
                                      self.inference.detect_and_embed(req.image, remaining()), remaining())
            whole_image = found.fallback
            keep = [i for i in range(len(found.labels))
                    if found.fallback or found.scores[i] >= req.min_detection_score]
            keep = sorted(keep, key=lambda i: -found.scores[i])[: req.max_objects or None]
            if keep:
                embeddings = found.embeddings[keep]
                objects = [(found.boxes[i], found.labels[i], float(found.scores[i])) for i in keep]
            else:  # every detection was below the caller's threshold: search the whole image
                embeddings, boxes = await self._timed(
                    metrics.TRITON_SECONDS.labels("embed_region"),
                    self.inference.embed_region(req.image, None, remaining()), remaining())
                objects, whole_image = [(boxes[0], "image", 0.0)], True
        metrics.OBJECTS_PER_IMAGE.observe(len(objects))

        hits = await self._timed(
            metrics.MILVUS_SECONDS.labels("search"),
            asyncio.to_thread(store.search, embeddings, top_k * self.settings.group_overfetch, expression),
            remaining())
        response = pb.SearchByImageResponse(whole_image_searched=whole_image, models=self._model_info())
        for (box, label, score), object_hits in zip(objects, hits, strict=True):
            group = response.objects.add(box=_box(box), label=label, detection_score=score)
            group.matches.extend(self._collapse(object_hits, top_k, req.min_similarity))
        return response

    @staticmethod
    def _collapse(hits: list[Hit], top_k: int, min_similarity: float) -> list[pb.Match]:
        """Best hit per product, best first (several images of a product count once)."""
        matches: list[pb.Match] = []
        seen: set[str] = set()
        for hit in sorted(hits, key=lambda h: -h.similarity):
            if len(matches) == top_k or (min_similarity and hit.similarity < min_similarity):
                break
            f = hit.fields
            if f["product_id"] in seen:
                continue
            seen.add(f["product_id"])
            product = pb.Product(product_id=f["product_id"], category=f["category"], price=f["price"],
                                 title=f["title"], attributes={k: str(v) for k, v in (f["attributes"] or {}).items()})
            matches.append(pb.Match(product_id=f["product_id"], image_id=f["image_id"],
                                    similarity=hit.similarity, product=product,
                                    catalog_box=pb.BoundingBox(**f["box"])))
        return matches

    async def batch_search(self, req: pb.BatchSearchByImageRequest,
                           remaining: Callable[[], float | None]) -> pb.BatchSearchByImageResponse:
        if not 1 <= len(req.requests) <= self.settings.max_batch_images:
            raise InvalidInput(f"requests must hold 1..{self.settings.max_batch_images} images "
                               f"(VS_MAX_BATCH_IMAGES), got {len(req.requests)}")

        async def one(item: pb.SearchByImageRequest) -> pb.BatchSearchResult:
            try:
                return pb.BatchSearchResult(response=await self.search(item, remaining))
            except (InvalidInput, BackendUnavailable) as exc:
                return pb.BatchSearchResult(error=pb.Status(code=exc.code.value[0], message=str(exc)))

        results = await asyncio.gather(*(one(item) for item in req.requests))
        unavailable = [r for r in results if r.HasField("error") and r.error.code == BackendUnavailable.code.value[0]]
        if unavailable and len(unavailable) == len(results):
            raise BackendUnavailable(unavailable[0].error.message)
        return pb.BatchSearchByImageResponse(results=results)

    # -- import ---------------------------------------------------------------------------
    def _check_product(self, req: pb.ImportProductsRequest) -> dict[str, Any]:
        p = req.product
        check_id(p.product_id, "product.product_id")
        if len(p.category) > 128 or len(p.title) > 512:
            raise InvalidInput("product.category must be at most 128 and product.title 512 characters")
        if not math.isfinite(p.price) or p.price < 0:
            raise InvalidInput(f"product.price must be finite and >= 0, got {p.price}")
        if len(p.attributes) > MAX_ATTRIBUTES:
            raise InvalidInput(f"product.attributes: at most {MAX_ATTRIBUTES} keys")
        for key, value in p.attributes.items():
            check_key(key, "product.attributes")
            check_value(value, f"product.attributes[{key!r}] (max {MAX_VALUE_LENGTH})")
        if not 1 <= len(req.images) <= self.settings.max_images_per_product:
            raise InvalidInput(f"a product needs 1..{self.settings.max_images_per_product} images "
                               f"(VS_MAX_IMAGES_PER_PRODUCT), got {len(req.images)}")
        ids = [check_id(img.image_id, "image_id") for img in req.images]
        if len(set(ids)) != len(ids):
            raise InvalidInput("image_id values must be unique within a product")
        return {"category": p.category, "price": float(p.price), "title": p.title,
                "attributes": dict(p.attributes)}

    async def _embed_image(self, image: pb.ProductImage, remaining: Callable[[], float | None]
                           ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        self._check_image(image.content, f"image {image.image_id!r}")
        if image.mode == pb.EMBED_MODE_DETECT:
            found = await self._timed(metrics.TRITON_SECONDS.labels("detect_and_embed"),
                                      self.inference.detect_and_embed(image.content, remaining()), remaining())
            return found.embeddings, found.boxes, found.labels
        if image.mode == pb.EMBED_MODE_REGION:
            if not image.HasField("region"):
                raise InvalidInput(f"image {image.image_id!r}: mode REGION needs a region")
            region = _region(image.region, f"image {image.image_id!r} region")
            label = REGION_LABEL
        elif image.mode == pb.EMBED_MODE_WHOLE_IMAGE:
            region, label = None, "image"
        else:
            raise InvalidInput(f"image {image.image_id!r}: unknown mode {image.mode}")
        embeddings, boxes = await self._timed(metrics.TRITON_SECONDS.labels("embed_region"),
                                              self.inference.embed_region(image.content, region, remaining()),
                                              remaining())
        return embeddings, boxes, [label]

    async def _import_one(self, req: pb.ImportProductsRequest, limiter: asyncio.Semaphore,
                          remaining: Callable[[], float | None], written: dict[str, set[str]]
                          ) -> list[pb.ImportItemStatus]:
        pid = req.product.product_id

        def status(image_id: str, exc: Exception | None, vectors: int = 0) -> pb.ImportItemStatus:
            code, message = (0, "") if exc is None else (exc.code.value[0], str(exc))
            return pb.ImportItemStatus(product_id=pid, image_id=image_id, vectors=vectors,
                                       status=pb.Status(code=code, message=message))

        try:
            attributes = self._check_product(req)
        except InvalidInput as exc:
            return [status(img.image_id, exc) for img in req.images] or [status("", exc)]

        async def embed(image: pb.ProductImage) -> Any:
            async with limiter:
                try:
                    return await self._embed_image(image, remaining)
                except ServiceError as exc:
                    return exc

        outcomes = await asyncio.gather(*(embed(img) for img in req.images))
        rows: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for image, outcome in zip(req.images, outcomes, strict=True):
            if isinstance(outcome, Exception):
                continue
            embeddings, boxes, labels = outcome
            counts[image.image_id] = len(embeddings)
            for k, (vector, box, label) in enumerate(zip(embeddings, boxes, labels, strict=True)):
                rows.append({"pk": row_key(pid, image.image_id, k), "product_id": pid, "image_id": image.image_id,
                             "label": label[:64], "box": _box_fields(box), "vector": vector.tolist(),
                             **attributes})
        failed = [img.image_id for img, out in zip(req.images, outcomes, strict=True) if isinstance(out, Exception)]
        if rows:  # nothing stored changes when every image of the product failed
            try:
                store = self._store()
                async with self._write_lock:
                    written[pid] = await self._timed(
                        metrics.MILVUS_SECONDS.labels("upsert"),
                        asyncio.to_thread(store.replace_product, pid, rows, failed, attributes), None)
            except ServiceError as exc:
                return [status(img.image_id, exc) for img in req.images]
        return [status(img.image_id, out if isinstance(out, Exception) else None, counts.get(img.image_id, 0))
                for img, out in zip(req.images, outcomes, strict=True)]

    async def import_products(self, requests: AsyncIterator[pb.ImportProductsRequest],
                              remaining: Callable[[], float | None]) -> pb.ImportProductsResponse:
        store = self._store()
        limiter = asyncio.Semaphore(self.settings.import_concurrency)
        tasks: list[asyncio.Task] = []
        written: dict[str, set[str]] = {}  # product id -> the row keys it has after this call
        async for req in requests:
            tasks.append(asyncio.create_task(self._import_one(req, limiter, remaining, written)))
            # Backpressure: read further products only while few are being embedded.
            while sum(not t.done() for t in tasks) >= 2 * self.settings.import_concurrency:
                await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        response = pb.ImportProductsResponse()
        for statuses in await asyncio.gather(*tasks):
            response.items.extend(statuses)
            ok = [s for s in statuses if s.status.code == 0]
            response.products_imported += 1 if ok else 0
            response.vectors_written += sum(s.vectors for s in ok)
            response.images_failed += len(statuses) - len(ok)
        if written:
            async with self._write_lock:
                await self._timed(metrics.MILVUS_SECONDS.labels("flush"), asyncio.to_thread(store.seal), None)
        await self._timed(metrics.MILVUS_SECONDS.labels("wait_visible"),
                          asyncio.to_thread(store.wait_visible, written), None)
        down = [s for s in response.items if s.status.code == BackendUnavailable.code.value[0]]
        if down:
            raise BackendUnavailable(
                f"{len(down)} of {len(response.items)} images were not imported because a backend is down "
                f"({down[0].status.message}); the import is idempotent, retry it")
        return response

    async def delete_products(self, req: pb.DeleteProductsRequest) -> pb.DeleteProductsResponse:
        store = self._store()
        if not 1 <= len(req.product_ids) <= MAX_DELETE_IDS:
            raise InvalidInput(f"product_ids must hold 1..{MAX_DELETE_IDS} ids, got {len(req.product_ids)}")
        ids = [check_id(pid, "product_id") for pid in req.product_ids]
        async with self._write_lock:
            deleted = await self._timed(metrics.MILVUS_SECONDS.labels("delete"),
                                        asyncio.to_thread(store.delete_products, ids), None)
        await self._timed(metrics.MILVUS_SECONDS.labels("wait_visible"),
                          asyncio.to_thread(store.wait_visible, {pid: set() for pid in ids}), None)
        return pb.DeleteProductsResponse(vectors_deleted=deleted)

    async def stats(self) -> pb.CatalogStats:
        store = self._store()
        data = await self._timed(metrics.MILVUS_SECONDS.labels("stats"), asyncio.to_thread(store.stats), None)
        return pb.CatalogStats(collection=store.collection, models=self._model_info(), milvus_mode=store.mode,
                               **data)
