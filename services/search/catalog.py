"""ImportProducts, DeleteProducts and GetCatalogStats.

Writes are serialised by one lock (Milvus Lite wants a single writer; on a server it keeps
each product's upsert + delete pair ordered). An import returns once its rows are visible
at the search consistency level, so searches can stay on the cheaper level.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

from services.api import pb
from services.search import mapping, metrics
from services.search import product_fields as pf
from services.search.backends import Backends, timed
from services.search.config import Settings
from services.search.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ServiceError
from services.search.milvus_store import row_key
from services.search.search import IMAGE_LABEL, REGION_LABEL
from services.search.triton_client import DETECT_ENSEMBLE, REGION_ENSEMBLE
from services.search.validation import check_delete, check_image, check_product, check_region

Remaining = Callable[[], float | None]
Embedded = tuple[np.ndarray, np.ndarray, list[str]]  # embeddings, boxes, labels


class Catalog:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self._write_lock = asyncio.Lock()

    async def _embed_image(self, image: pb.ProductImage, remaining: Remaining) -> Embedded:
        check_image(image.content, f"image {image.image_id!r}", self.settings)
        triton = self.backends.triton
        if image.mode == pb.EMBED_MODE_DETECT:
            found = await timed(metrics.TRITON_SECONDS.labels(DETECT_ENSEMBLE),
                                triton.detect_and_embed(image.content, remaining()), remaining())
            if found.labels and not self.settings.store_whole_image:
                return found.embeddings, found.boxes, list(found.labels)
            # every detected object, and the image as a whole (stored for every catalog image,
            # so a product is found even when the shopper's photo is detected differently)
            return (np.concatenate([found.embeddings.reshape(-1, found.whole_embedding.shape[-1]),
                                    found.whole_embedding[None]]),
                    np.concatenate([found.boxes.reshape(-1, 4), found.whole_box[None]]),
                    [*found.labels, IMAGE_LABEL])
        if image.mode == pb.EMBED_MODE_REGION:
            if not image.HasField("region"):
                raise InvalidInput(f"image {image.image_id!r}: mode REGION needs a region")
            region = check_region(image.region, f"image {image.image_id!r} region")
            label = REGION_LABEL
        elif image.mode == pb.EMBED_MODE_WHOLE_IMAGE:
            region, label = None, IMAGE_LABEL
        else:
            raise InvalidInput(f"image {image.image_id!r}: unknown mode {image.mode}")
        embeddings, boxes = await timed(metrics.TRITON_SECONDS.labels(REGION_ENSEMBLE),
                                        triton.embed_region(image.content, region, remaining()), remaining())
        return embeddings, boxes, [label]

    def _write_product(self, pid: str, rows: list[dict[str, Any]], failed: list[str],
                       attributes: dict[str, Any]) -> set[str]:
        """Store ``rows`` as the product's vectors, keeping the old vectors of images that
        failed this time (with the new attributes). Runs in a worker thread."""
        store = self.backends.store
        if failed:
            rows = rows + [{**row, **attributes} for row in store.image_rows(pid, failed)]
        return store.replace_product(pid, rows)

    async def _import_one(self, req: pb.ImportProductsRequest, limiter: asyncio.Semaphore, remaining: Remaining,
                          written: dict[str, set[str]]) -> list[pb.ImportItemStatus]:
        pid = req.product.product_id

        def status(image_id: str, error: ServiceError | None, vectors: int = 0) -> pb.ImportItemStatus:
            return pb.ImportItemStatus(product_id=pid, image_id=image_id, vectors=vectors,
                                       status=mapping.status(error))

        try:
            attributes = check_product(req, self.settings)
        except InvalidInput as exc:
            return [status(img.image_id, exc) for img in req.images] or [status("", exc)]

        async def embed(image: pb.ProductImage) -> Embedded | ServiceError:
            async with limiter:
                try:
                    return await self._embed_image(image, remaining)
                except ServiceError as exc:
                    return exc

        outcomes = await asyncio.gather(*(embed(img) for img in req.images))
        rows: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for image, outcome in zip(req.images, outcomes, strict=True):
            if isinstance(outcome, ServiceError):
                continue
            embeddings, boxes, labels = outcome
            counts[image.image_id] = len(embeddings)
            for k, (vector, box, label) in enumerate(zip(embeddings, boxes, labels, strict=True)):
                rows.append({"pk": row_key(pid, image.image_id, k), "product_id": pid, "image_id": image.image_id,
                             "label": label[:pf.LABEL_MAX], "box": mapping.box_fields(box), "vector": vector.tolist(),
                             **attributes})
        failed = [img.image_id for img, out in zip(req.images, outcomes, strict=True) if isinstance(out, ServiceError)]
        if rows:  # nothing stored changes when every image of the product failed
            try:
                async with self._write_lock:
                    written[pid] = await timed(metrics.MILVUS_SECONDS.labels("upsert"),
                                               asyncio.to_thread(self._write_product, pid, rows, failed, attributes),
                                               None)
            except ServiceError as exc:
                return [status(img.image_id, exc) for img in req.images]
        return [status(img.image_id, out if isinstance(out, ServiceError) else None, counts.get(img.image_id, 0))
                for img, out in zip(req.images, outcomes, strict=True)]

    async def _bounded(self, requests: AsyncIterator[pb.ImportProductsRequest]
                       ) -> AsyncIterator[pb.ImportProductsRequest]:
        """The caller's stream, closed when it idles, lasts too long or sends too many products:
        a client that opens a stream and trickles must not hold a slot forever."""
        s = self.settings
        deadline = time.monotonic() + s.import_max_duration_s
        iterator = aiter(requests)
        count = 0
        while True:
            left = deadline - time.monotonic()
            try:
                request = await asyncio.wait_for(anext(iterator), max(0.0, min(s.import_idle_timeout_s, left)))
            except StopAsyncIteration:
                return
            except TimeoutError:
                if left <= s.import_idle_timeout_s:
                    raise DeadlineExceeded(
                        f"the import stream was open for {s.import_max_duration_s:.0f} s "
                        f"(VS_IMPORT_MAX_DURATION_S) and was closed; {count} products received before were "
                        "imported, send the rest in another call") from None
                raise DeadlineExceeded(
                    f"the import stream sent nothing for {s.import_idle_timeout_s:.0f} s (VS_IMPORT_IDLE_TIMEOUT_S) "
                    f"and was closed; {count} products received before were imported, send the rest in another "
                    "call") from None
            count += 1
            if count > s.import_max_products:
                raise InvalidInput(f"at most {s.import_max_products} products per ImportProducts call "
                                   f"(VS_IMPORT_MAX_PRODUCTS); the first {s.import_max_products} were imported, "
                                   "send the rest in another call")
            yield request

    async def import_products(self, requests: AsyncIterator[pb.ImportProductsRequest],
                              remaining: Remaining) -> pb.ImportProductsResponse:
        self.backends.ready()
        store = self.backends.store
        limiter = asyncio.Semaphore(self.settings.import_concurrency)
        tasks: list[asyncio.Task] = []
        written: dict[str, set[str]] = {}  # product id -> the row keys it has after this call
        try:
            async for req in self._bounded(requests):
                tasks.append(asyncio.create_task(self._import_one(req, limiter, remaining, written)))
                # Backpressure: read further products only while few are being embedded.
                while sum(not t.done() for t in tasks) >= 2 * self.settings.import_concurrency:
                    await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        except ServiceError:
            # The stream broke off: finish the products already received (each is written
            # whole or not at all), then report the stream's error.
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        response = pb.ImportProductsResponse()
        for statuses in await asyncio.gather(*tasks):
            response.items.extend(statuses)
            ok = [s for s in statuses if s.status.code == 0]
            response.products_imported += 1 if ok else 0
            response.vectors_written += sum(s.vectors for s in ok)
            response.images_failed += len(statuses) - len(ok)
        if written:
            async with self._write_lock:
                await timed(metrics.MILVUS_SECONDS.labels("flush"), asyncio.to_thread(store.seal), None)
        await timed(metrics.MILVUS_SECONDS.labels("wait_visible"), asyncio.to_thread(store.wait_visible, written),
                    None)
        down = [s for s in response.items if s.status.code == BackendUnavailable.code.value[0]]
        if down:
            raise BackendUnavailable(
                f"{len(down)} of {len(response.items)} images were not imported because a backend is down "
                f"({down[0].status.message}); the import is idempotent, retry it")
        return response

    async def delete_products(self, req: pb.DeleteProductsRequest) -> pb.DeleteProductsResponse:
        self.backends.ready()
        store = self.backends.store
        ids = check_delete(req)
        async with self._write_lock:
            deleted = await timed(metrics.MILVUS_SECONDS.labels("delete"),
                                  asyncio.to_thread(store.delete_products, ids), None)
        await timed(metrics.MILVUS_SECONDS.labels("wait_visible"),
                    asyncio.to_thread(store.wait_visible, {pid: set() for pid in ids}), None)
        return pb.DeleteProductsResponse(vectors_deleted=deleted)

    async def stats(self) -> pb.CatalogStats:
        models = self.backends.ready()
        store = self.backends.store
        data = await timed(metrics.MILVUS_SECONDS.labels("stats"), asyncio.to_thread(store.stats), None)
        return pb.CatalogStats(collection=store.collection, models=mapping.model_info(models), milvus_mode=store.mode,
                               **data)
