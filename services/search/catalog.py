"""ImportProducts, DeleteProducts and GetCatalogStats.

Writes are batched: the rows of many products go in one upsert and one delete, and two
writes of the same product never overlap (write_locks.py; on Milvus Lite no two writes do).
An image whose content key (bytes, mode, region, models) matches its stored rows is not
embedded again, and its vectors are read back only when its rows must be
rewritten. An import returns once its rows are visible at the search consistency level, so
searches can stay on the cheaper level.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.api import pb
from services.search import mapping, metrics
from services.search import product_fields as pf
from services.search.backends import Backends, timed
from services.search.coalesce import Coalescer
from services.search.config import Settings
from services.search.errors import BackendUnavailable, Conflict, DeadlineExceeded, InvalidInput, ServiceError
from services.search.milvus_store import row_key
from services.search.search import IMAGE_LABEL, REGION_LABEL
from services.search.triton_client import DETECT_ENSEMBLE, REGION_ENSEMBLE, ModelVersions
from services.search.validation import check_delete, check_image, check_product, check_region
from services.search.write_locks import WriteLocks

Remaining = Callable[[], float | None]
Embedded = tuple[np.ndarray, np.ndarray, list[str]]  # embeddings, boxes, labels


@dataclass
class Prepared:
    product_id: str
    rows: list[dict[str, Any]]  # empty: nothing to write (invalid, every image failed, or all as stored)
    statuses: list[pb.ImportItemStatus]
    stale: list[str] = field(default_factory=list)  # stored keys the new rows do not replace


class StoredRows(Coalescer[str, list[dict[str, Any]]]):
    """The stored rows of the products being imported, read for many products in one Milvus
    query (products of every import call in flight)."""

    MAX_PRODUCTS = 512

    def __init__(self, store: Any) -> None:
        super().__init__(self.MAX_PRODUCTS)
        self.store = store

    def run(self, product_ids: list[str]) -> list[list[dict[str, Any]]]:
        by_product: dict[str, list[dict[str, Any]]] = {}
        for row in self.store.product_rows(sorted(set(product_ids))):
            by_product.setdefault(row["product_id"], []).append(row)
        return [by_product.get(pid, []) for pid in product_ids]


class VisibleWrites(Coalescer[dict[str, set[str]], None]):
    """Wait until the writes of import calls are searchable, many calls in one check. Calls
    whose products overlap go in different checks (each expects its own rows)."""

    MAX_PRODUCTS = 4096

    def __init__(self, store: Any) -> None:
        super().__init__(self.MAX_PRODUCTS)
        self.store = store

    def take(self) -> list[tuple[dict[str, set[str]], asyncio.Future]]:
        batch, rest, products = [], [], set()
        for item in self.queue:
            expected = item[0]
            if products.isdisjoint(expected) and (not batch or len(products) + len(expected) <= self.limit):
                batch.append(item)
                products |= expected.keys()
            else:
                rest.append(item)
        self.queue = rest
        return batch

    def run(self, items: list[dict[str, set[str]]]) -> list[None]:
        self.store.wait_visible({pid: keys for expected in items for pid, keys in expected.items()})
        return [None] * len(items)


def content_key(image: pb.ProductImage, models: ModelVersions, store_whole_image: bool = True,
                min_detection_score: float = 0.0) -> str:
    """What decides an image's rows: its bytes, embed mode and region, both models and the
    image pipeline's settings, whether the whole image is stored besides its objects, and the
    least score of a stored object."""
    digest = hashlib.sha256()
    region = image.region
    digest.update(f"{models.detector_sha256}:{models.embedder_sha256}:{models.pipeline}:{image.mode}:"
                  f"{region.x_min}:{region.y_min}:"
                  f"{region.x_max}:{region.y_max}:{store_whole_image}:{min_detection_score:g}:".encode())
    digest.update(image.content)
    return digest.hexdigest()


def _as_stored(rows: list[dict[str, Any]], stored: list[dict[str, Any]]) -> bool:
    """The new rows equal the stored ones, key for key and field for field."""
    if len(rows) != len(stored):
        return False
    by_key = {row["pk"]: row for row in stored}
    return all(row["pk"] in by_key and all(by_key[row["pk"]].get(k) == v for k, v in row.items() if k != "vector")
               for row in rows)


def _fail(prepared: Prepared, error: ServiceError) -> None:
    """Every image of a product that is not written reports ``error``."""
    prepared.statuses = [pb.ImportItemStatus(product_id=s.product_id, image_id=s.image_id, status=mapping.status(error))
                         for s in prepared.statuses]
    prepared.rows = []


def _flag_heads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag the product's first row and each image's first row (what the stats count)."""
    rows = sorted(rows, key=lambda r: r["pk"])
    seen: set[str] = set()
    for i, row in enumerate(rows):
        row["product_head"] = i == 0
        row["image_head"] = row["image_id"] not in seen
        seen.add(row["image_id"])
    return rows


class _Call:
    """Where one ImportProducts call stands: its products in request order, how many of them
    are buffered (received, not yet prepared), how many prepared rows wait to be written."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []  # one per product: its Prepared
        self.buffered_products = 0
        self.buffered_bytes = 0
        self.room = asyncio.Event()  # set when a buffered product is prepared
        self.ready_rows = 0  # rows of prepared products not yet written
        self.written_until = 0  # products written (or left unchanged) so far, in request order
        self.written: dict[str, set[str]] = {}  # product id -> the row keys it has after this call

    def received(self, request: pb.ImportProductsRequest, task: asyncio.Task) -> None:
        size = sum(len(image.content) for image in request.images)
        self.buffered_products += 1
        self.buffered_bytes += size
        self.tasks.append(task)
        task.add_done_callback(lambda done: self._prepared(done, size))

    def _prepared(self, task: asyncio.Task, size: int) -> None:
        self.buffered_products -= 1
        self.buffered_bytes -= size
        if not task.cancelled() and task.exception() is None:
            self.ready_rows += len(task.result().rows)
        self.room.set()


class Catalog:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends
        self._locks = WriteLocks(exclusive=not settings.milvus_is_server)
        self._stored_rows = StoredRows(backends.store)
        self._visible_writes = VisibleWrites(backends.store)

    async def _embed_image(self, image: pb.ProductImage, remaining: Remaining) -> Embedded:
        check_image(image.content, f"image {image.image_id!r}", self.settings)
        triton = self.backends.triton
        if image.mode == pb.EMBED_MODE_DETECT:
            found = await timed(metrics.TRITON_SECONDS.labels(DETECT_ENSEMBLE),
                                triton.detect_and_embed(image.content, remaining()), remaining())
            found = found.confident(self.settings.confident_detection_score)
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

    async def _prepare(self, req: pb.ImportProductsRequest, limiter: asyncio.Semaphore, remaining: Remaining,
                       models: ModelVersions) -> Prepared:
        """One product's rows, ready to write: images whose content key matches their stored
        rows keep those vectors (no Triton call), the others are embedded, and images that fail
        keep their old vectors; every row gets the new attributes."""
        pid = req.product.product_id

        def status(image_id: str, error: ServiceError | None, vectors: int = 0) -> pb.ImportItemStatus:
            return pb.ImportItemStatus(product_id=pid, image_id=image_id, vectors=vectors,
                                       status=mapping.status(error))

        try:
            attributes = check_product(req, self.settings)
        except InvalidInput as exc:
            return Prepared(pid, [], [status(img.image_id, exc) for img in req.images] or [status("", exc)])
        try:
            stored = await self._stored_rows.submit(pid)
        except ServiceError as exc:
            return Prepared(pid, [], [status(img.image_id, exc) for img in req.images])
        by_image: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(stored, key=lambda r: r["pk"]):
            by_image.setdefault(row["image_id"], []).append(row)

        def unchanged(image: pb.ProductImage, key: str) -> bool:
            old = by_image.get(image.image_id, [])
            return bool(old) and all(row.get("content_key") == key for row in old)

        async def embed(image: pb.ProductImage) -> Embedded | ServiceError:
            async with limiter:
                try:
                    return await self._embed_image(image, remaining)
                except ServiceError as exc:
                    return exc

        keys = [content_key(image, models, self.settings.store_whole_image, self.settings.confident_detection_score)
                for image in req.images]
        todo = [img for img, key in zip(req.images, keys, strict=True) if not unchanged(img, key)]
        # one image (most products) is awaited here: no task per image
        results = [await embed(todo[0])] if len(todo) == 1 else await asyncio.gather(*(embed(img) for img in todo))
        outcomes = dict(zip([img.image_id for img in todo], results, strict=True))
        rows: list[dict[str, Any]] = []
        statuses = []
        for image, key in zip(req.images, keys, strict=True):
            outcome = outcomes.get(image.image_id)
            if outcome is None or isinstance(outcome, ServiceError):
                # unchanged, or failed this time: the image keeps its rows, with the new attributes
                # (their vectors are read back if the product is written, see _write)
                rows += [{**row, **attributes} for row in by_image.get(image.image_id, [])]
                count = len(by_image.get(image.image_id, [])) if outcome is None else 0
                statuses.append(status(image.image_id, outcome, count))
                metrics.IMPORTED_IMAGES.labels("unchanged" if outcome is None else "failed").inc()
                continue
            embeddings, boxes, labels = outcome
            statuses.append(status(image.image_id, None, len(embeddings)))
            metrics.IMPORTED_IMAGES.labels("embedded").inc()
            for k, (vector, box, label) in enumerate(zip(embeddings, boxes, labels, strict=True)):
                # float32 arrays, not lists: 8x less memory while the rows wait for their batch
                rows.append({"pk": row_key(pid, image.image_id, k), "product_id": pid, "image_id": image.image_id,
                             "label": label[:pf.LABEL_MAX], "box": mapping.box_fields(box),
                             "vector": np.asarray(vector, np.float32), "content_key": key, **attributes})
        if not any(s.status.code == 0 for s in statuses):
            return Prepared(pid, [], statuses)  # nothing stored changes when every image of the product failed
        rows = _flag_heads(rows)
        if not outcomes and _as_stored(rows, stored):
            metrics.IMPORTED_PRODUCTS_UNCHANGED.inc()
            return Prepared(pid, [], statuses)  # every image and attribute as stored: nothing to write
        new_keys = {row["pk"] for row in rows}
        return Prepared(pid, rows, statuses, sorted(row["pk"] for row in stored if row["pk"] not in new_keys))

    async def _kept_vectors(self, batch: list[Prepared]) -> None:
        """Give the rows an import keeps (unchanged or failed images) their stored vectors, in
        one lookup by key; a product whose kept rows were deleted meanwhile is not written."""
        missing = [row["pk"] for p in batch for row in p.rows if "vector" not in row]
        if not missing:
            return
        vectors = await timed(metrics.MILVUS_SECONDS.labels("read_vectors"),
                              asyncio.to_thread(self.backends.store.vectors, missing), None)
        for p in batch:
            if any("vector" not in row and row["pk"] not in vectors for row in p.rows):
                _fail(p, Conflict(f"product {p.product_id!r} was changed (deleted?) by another call during this "
                                  "import; nothing of it was written, retry it"))
                continue
            for row in p.rows:
                row.setdefault("vector", vectors.get(row["pk"]))

    async def _write(self, batch: list[Prepared], written: dict[str, set[str]]) -> None:
        """One upsert + delete for the rows of many products; if it fails, every product of
        the batch reports the error (each is then unchanged or fully written: retry is safe).
        The rows are dropped once written (the statuses stay for the response)."""
        try:
            await self._kept_vectors(batch)
            rows = {p.product_id: p.rows for p in batch if p.rows}
            if not rows:
                return
            stale = [key for p in batch if p.rows for key in p.stale]
            async with self._locks.hold(rows):
                keys = await timed(metrics.MILVUS_SECONDS.labels("upsert"),
                                   asyncio.to_thread(self.backends.store.replace_products, rows, stale), None)
        except ServiceError as exc:
            for p in batch:
                if p.rows:
                    _fail(p, exc)
            return
        finally:
            for p in batch:
                p.rows = []
        written.update(keys)

    async def _write_done(self, call: _Call, final: bool) -> None:
        """Write the prepared products not yet written, in request order, in batches of about
        VS_IMPORT_WRITE_BATCH_ROWS rows; a partial batch waits for more unless ``final``."""
        limit = self.settings.import_write_batch_rows
        while final or call.ready_rows >= limit:
            batch, count = [], 0
            for i in range(call.written_until, len(call.tasks)):
                task = call.tasks[i]
                if not task.done() or count >= limit:
                    break
                batch.append(task.result())
                count += len(batch[-1].rows)
            if not batch or (count < limit and not final):
                return
            call.ready_rows -= count
            await self._write(batch, call.written)
            call.written_until += len(batch)

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
                async with asyncio.timeout(max(0.0, min(s.import_idle_timeout_s, left))):
                    request = await anext(iterator)
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
        models = self.backends.ready()
        store = self.backends.store
        limiter = asyncio.Semaphore(self.settings.import_concurrency)
        call = _Call()
        try:
            async for req in self._bounded(requests):
                call.received(req, asyncio.create_task(self._prepare(req, limiter, remaining, models)))
                # Backpressure: read further products only while the ones waiting for their stored
                # rows or for Triton hold little memory (enough to read stored rows in big batches).
                while (call.buffered_products >= StoredRows.MAX_PRODUCTS
                       or call.buffered_bytes >= self.settings.import_buffer_bytes):
                    call.room.clear()
                    await call.room.wait()
                await self._write_done(call, final=False)
        except ServiceError:
            # The stream broke off: finish the products already received (each is written
            # whole or not at all), then report the stream's error.
            await asyncio.gather(*call.tasks, return_exceptions=True)
            await self._write_done(call, final=True)
            raise
        await asyncio.gather(*call.tasks)
        await self._write_done(call, final=True)
        written = call.written
        response = pb.ImportProductsResponse()
        for task in call.tasks:
            statuses = task.result().statuses
            response.items.extend(statuses)
            ok = [s for s in statuses if s.status.code == 0]
            response.products_imported += 1 if ok else 0
            response.vectors_written += sum(s.vectors for s in ok)
            response.images_failed += len(statuses) - len(ok)
        if written:
            async with self._locks.hold(written):
                await timed(metrics.MILVUS_SECONDS.labels("flush"), asyncio.to_thread(store.seal), None)
        if written:
            await timed(metrics.MILVUS_SECONDS.labels("wait_visible"), self._visible_writes.submit(written), None)
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
        async with self._locks.hold(ids):
            deleted = await timed(metrics.MILVUS_SECONDS.labels("delete"),
                                  asyncio.to_thread(store.delete_products, ids), None)
        await timed(metrics.MILVUS_SECONDS.labels("wait_visible"),
                    self._visible_writes.submit({pid: set() for pid in ids}), None)
        return pb.DeleteProductsResponse(vectors_deleted=deleted)

    async def stats(self) -> pb.CatalogStats:
        models = self.backends.ready()
        store = self.backends.store
        data = await timed(metrics.MILVUS_SECONDS.labels("stats"), asyncio.to_thread(store.stats), None)
        return pb.CatalogStats(collection=store.collection, models=mapping.model_info(models), milvus_mode=store.mode,
                               **data)
