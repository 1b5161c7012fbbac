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
import time
from collections.abc import AsyncIterator

from services.api import pb
from services.domain import ModelVersions
from services.search import catalog_rows, mapping, metrics, objects
from services.search.backends import Backends, Remaining, timed
from services.search.catalog_rows import Prepared, content_key
from services.search.config import Settings
from services.search.embedding import embed
from services.search.errors import BackendUnavailable, Conflict, DeadlineExceeded, InvalidInput, ServiceError
from services.search.objects import Objects
from services.search.store_batches import StoredRows, VisibleWrites
from services.search.validation import check_delete, check_image, check_product, check_region
from services.search.write_locks import WriteLocks


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

    async def _embed_image(self, image: pb.ProductImage, remaining: Remaining) -> Objects:
        """The rows ``objects.stored`` keeps of one image."""
        what = f"image {image.image_id!r}"
        check_image(image.content, what, self.settings)
        if image.mode == pb.EMBED_MODE_REGION and not image.HasField("region"):
            raise InvalidInput(f"{what}: mode REGION needs a region")
        if image.mode not in (pb.EMBED_MODE_DETECT, pb.EMBED_MODE_REGION, pb.EMBED_MODE_WHOLE_IMAGE):
            raise InvalidInput(f"{what}: unknown mode {image.mode}")
        region = check_region(image.region, f"{what} region") if image.mode == pb.EMBED_MODE_REGION else None
        found = await embed(self.backends.triton, image.content, image.mode, region, remaining)
        return objects.stored(found, self.settings.confident_detection_score, self.settings.store_whole_image)

    async def _prepare(self, req: pb.ImportProductsRequest, limiter: asyncio.Semaphore, remaining: Remaining,
                       models: ModelVersions) -> Prepared:
        """One product's rows, ready to write: images whose content key matches their stored
        rows keep those vectors (no Triton call), the others are embedded, and images that fail
        keep their old vectors; every row gets the new values (``catalog_rows.prepare``)."""
        pid = req.product.product_id
        image_ids = [img.image_id for img in req.images]
        try:
            values = check_product(req, self.settings)
            stored = await self._stored_rows.submit(pid)
        except ServiceError as exc:
            return catalog_rows.failed(pid, image_ids, exc)
        old = catalog_rows.by_image(stored)

        async def embed_one(image: pb.ProductImage) -> Objects | ServiceError:
            async with limiter:
                try:
                    return await self._embed_image(image, remaining)
                except ServiceError as exc:
                    return exc

        keys = [content_key(image, models, self.settings.store_whole_image, self.settings.confident_detection_score)
                for image in req.images]
        todo = [img for img, key in zip(req.images, keys, strict=True)
                if not catalog_rows.unchanged(old.get(img.image_id, []), key)]
        # one image (most products) is awaited here: no task per image
        results = [await embed_one(todo[0])] if len(todo) == 1 else await asyncio.gather(*(embed_one(i) for i in todo))
        outcomes = dict(zip([img.image_id for img in todo], results, strict=True))
        prepared = catalog_rows.prepare(pid, list(req.images), keys, values, stored, outcomes)
        for item in prepared.statuses:
            kind = "failed" if item.status.code else "embedded" if item.image_id in outcomes else "unchanged"
            metrics.IMPORTED_IMAGES.labels(kind).inc()
        if prepared.unchanged:
            metrics.IMPORTED_PRODUCTS_UNCHANGED.inc()
        return prepared

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
                catalog_rows.fail(p, Conflict(f"product {p.product_id!r} was changed (deleted?) by another call "
                                              "during this import; nothing of it was written, retry it"))
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
                    catalog_rows.fail(p, exc)
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
        except ServiceError as exc:
            # The stream broke off: finish the products already received (each is written
            # whole or not at all), make them searchable, then report the stream's error with
            # what was written (the audit line records it).
            await asyncio.gather(*call.tasks, return_exceptions=True)
            await self._write_done(call, final=True)
            exc.partial = self._response(call)
            await self._settle(call.written)
            raise
        await asyncio.gather(*call.tasks)
        await self._write_done(call, final=True)
        response = self._response(call)
        await self._settle(call.written)
        down = [s for s in response.items if s.status.code == BackendUnavailable.code.value[0]]
        if down:
            raise BackendUnavailable(
                f"{len(down)} of {len(response.items)} images were not imported because a backend is down "
                f"({down[0].status.message}); the import is idempotent, retry it")
        return response

    @staticmethod
    def _response(call: _Call) -> pb.ImportProductsResponse:
        """The statuses and counts of the products a call prepared (failed preparations count
        nothing)."""
        response = pb.ImportProductsResponse()
        for task in call.tasks:
            if not task.done() or task.cancelled() or task.exception() is not None:
                continue
            statuses = task.result().statuses
            response.items.extend(statuses)
            ok = [s for s in statuses if s.status.code == 0]
            response.products_imported += 1 if ok else 0
            response.vectors_written += sum(s.vectors for s in ok)
            response.images_failed += len(statuses) - len(ok)
        return response

    async def _settle(self, written: dict[str, set[str]]) -> None:
        """Seal what a call wrote (Milvus Lite) and wait until searches see it."""
        if not written:
            return
        async with self._locks.hold(written):
            await timed(metrics.MILVUS_SECONDS.labels("flush"), asyncio.to_thread(self.backends.store.seal), None)
        await timed(metrics.MILVUS_SECONDS.labels("wait_visible"), self._visible_writes.submit(written), None)

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
