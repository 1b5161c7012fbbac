"""``make bench-write``: the catalog write path against the real Milvus 2.3.5 server.

Precomputed vectors stand in for Triton (a GPU pod embeds ~1,000 images/s, so this measures
whether Milvus writes keep up, not inference). In one run, on one server:

* the limit: raw ``insert`` of the same rows in batches of 1,024;
* the service's write path: ``Catalog.import_products`` (per-product replace semantics,
  stored-row lookups, batched upsert + delete, waiting until the rows are searchable), driven
  as ``services.importer --chunk 256 --concurrency 8`` drives it (calls of 256 products, eight
  at once: each call ends by waiting until its rows are searchable, ~0.3 s that the other
  calls fill);
* re-importing the unchanged catalog (no Triton call, attributes rewritten);
* ``GetCatalogStats`` at that size, and as a collection grows to a million rows.

Each timed phase starts once the server has indexed the rows the phase before wrote (see
``settle``): index builds run in the background on the same cores.

    python -m tools.bench.write [--images 20000] [--dimension 1280] [--stats-rows 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from services.api import pb
from services.catalog_upgrade import stream
from services.domain import ModelVersions
from services.paths import BUILD, ROOT
from services.search import mapping
from services.search.backends import Backends
from services.search.catalog import Catalog
from services.search.catalog_rows import content_key
from services.search.config import Settings
from services.search.errors import InvalidInput
from services.search.milvus_store import MilvusStore, row_key
from services.search.objects import Objects, photo
from tools.bench.common import machine
from tools.stack.milvus_processes import MilvusServer

log = logging.getLogger("tools.bench.write")

OBJECTS_PER_IMAGE = 2  # + the whole image: three rows per image, like a typical catalog photo


def precomputed_models(dimension: int) -> ModelVersions:
    """The model versions the precomputed vectors stand for (they name the collection)."""
    return ModelVersions("precomputed", "d" * 64, "precomputed", "e" * 64, dimension)


class PrecomputedTriton:
    """Answers every image with its precomputed vectors (image bytes = its index)."""

    def __init__(self, vectors: np.ndarray, dimension: int) -> None:
        self.vectors = vectors  # images x (objects + 1) x dimension
        self.models = precomputed_models(dimension)
        self.calls = 0

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None) -> Objects:
        self.calls += 1
        v = self.vectors[int(image)]
        boxes = np.array([[10 * i, 0, 10 * i + 8, 8] for i in range(OBJECTS_PER_IMAGE)], np.float32)
        return photo(boxes, np.full(OBJECTS_PER_IMAGE, 0.9, np.float32), ["cup"] * OBJECTS_PER_IMAGE, v[:-1],
                     np.array([0, 0, 100, 80], np.float32), v[-1])

    async def embed_region(self, image: bytes, region: tuple | None, remaining_s: float | None = None):  # noqa: ANN201
        raise InvalidInput("not used")

    async def probe(self) -> None:
        return None

    async def model_versions(self) -> ModelVersions:
        return self.models

    async def close(self) -> None:
        return None


def unit_vectors(n: int, dimension: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dimension)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def requests(images: int, price: float) -> list[pb.ImportProductsRequest]:
    return [pb.ImportProductsRequest(product=pb.Product(product_id=f"p{i}", category="shoes", price=price,
                                                        title=f"product {i}"),
                                     images=[pb.ProductImage(image_id="main", content=str(i).encode())])
            for i in range(images)]


async def import_all(catalog: Catalog, items: list[pb.ImportProductsRequest], per_call: int = 256,
                     at_once: int = 8) -> float:
    """Import ``items`` in calls of ``per_call`` products, ``at_once`` calls in flight (how
    ``services.importer --chunk 256 --concurrency 8`` sends them)."""
    slots = asyncio.Semaphore(at_once)

    async def call(chunk: list[pb.ImportProductsRequest]) -> None:
        async with slots:
            response = await catalog.import_products(stream(chunk), lambda: None)
        if response.images_failed:
            raise RuntimeError(f"{response.images_failed} images failed: {response.items[0]}")

    start = time.perf_counter()
    await asyncio.gather(*(call(items[i:i + per_call]) for i in range(0, len(items), per_call)))
    return time.perf_counter() - start


def image_rows(i: int, image_vectors: np.ndarray, models: ModelVersions) -> list[dict]:
    """The rows the service stores for image ``i`` (product ``p{i}``): objects, then the whole image."""
    key = content_key(pb.ProductImage(image_id="main", content=str(i).encode()), models)
    return [{"pk": row_key(f"p{i}", "main", k), "product_id": f"p{i}", "image_id": "main",
             "label": "cup" if k < OBJECTS_PER_IMAGE else "image",
             "box": mapping.box_fields((0, 0, 8, 8)), "category": "shoes", "price": 1.0,
             "title": f"product {i}", "attributes": {}, "content_key": key,
             "product_head": k == 0, "image_head": k == 0, "vector": v.tolist()}
            for k, v in enumerate(image_vectors)]


def wait_for_image(store: MilvusStore, i: int) -> None:
    store.wait_visible({f"p{i}": {row_key(f"p{i}", "main", k) for k in range(OBJECTS_PER_IMAGE + 1)}})


def settle(store: MilvusStore, timeout_s: float = 1800) -> float:
    """Flush the collection and wait until its index covers every row; returns the seconds.
    Between timed phases: the server builds the index of the rows just written in the
    background (on this 2-core machine, ~35 s of both cores for 30,000 1280-d rows), and the
    next phase must not pay for the previous one's build."""
    client = store.client()
    start = time.perf_counter()
    client.flush(store.collection, timeout=timeout_s)
    while time.perf_counter() - start < timeout_s:
        index = client.describe_index(store.collection, "vector", timeout=60)
        if int(index.get("pending_index_rows", 0)) == 0 and index.get("indexed_rows") == index.get("total_rows"):
            return time.perf_counter() - start
        time.sleep(1)
    raise RuntimeError(f"index of {store.collection} not built after {timeout_s:.0f} s")


def raw_insert(settings: Settings, vectors: np.ndarray, models: ModelVersions) -> tuple[float, float]:
    """The limit: the same rows inserted as they are, 1,024 per call, then made searchable.
    Returns the seconds, and those the server then needs to index them (see settle)."""
    store = MilvusStore(settings)
    store.connect(models)
    client = store.client()
    rows = [row for i, image_vectors in enumerate(vectors) for row in image_rows(i, image_vectors, models)]
    start = time.perf_counter()
    for i in range(0, len(rows), 1024):
        client.insert(store.collection, data=rows[i:i + 1024], timeout=60)
    wait_for_image(store, len(vectors) - 1)
    seconds = time.perf_counter() - start
    return seconds, settle(store)


def stats_at_scale(settings: Settings, checkpoints: list[int], dimension: int = 8, calls: int = 5
                   ) -> list[dict]:
    """``MilvusStore.stats()`` (what GetCatalogStats asks Milvus) as one collection grows to
    each number of rows: the median of ``calls`` calls. Counting reads the flag columns only, so
    the vectors are short here (the rows still have every other field the service stores)."""
    models = precomputed_models(dimension)
    store = MilvusStore(settings)
    store.connect(models)
    client = store.client()
    rng = np.random.default_rng(1)
    results, image, per_image = [], 0, OBJECTS_PER_IMAGE + 1
    for rows_wanted in checkpoints:
        while image * per_image < rows_wanted:
            batch = min(2048, -(-(rows_wanted - image * per_image) // per_image))
            vectors = unit_vectors(batch * per_image, dimension, int(rng.integers(1 << 30))).reshape(
                batch, per_image, dimension)
            client.insert(store.collection, data=[row for k in range(batch)
                                                  for row in image_rows(image + k, vectors[k], models)], timeout=120)
            image += batch
        wait_for_image(store, image - 1)
        timings = []
        for _ in range(calls):
            start = time.perf_counter()
            counts = store.stats()
            timings.append(time.perf_counter() - start)
        log.info("stats at %d rows: %s", image * per_image, counts)
        results.append({"rows": image * per_image, "median_ms": float(np.median(timings)) * 1000,
                        "max_ms": max(timings) * 1000, "products": counts["products"], "vectors": counts["vectors"]})
    return results


async def write_path(settings: Settings, vectors: np.ndarray) -> dict:
    triton = PrecomputedTriton(vectors, vectors.shape[-1])
    backends = Backends(triton, MilvusStore(settings))
    if any((await backends.probe()).values()):
        raise RuntimeError("backends not ready")
    catalog = Catalog(settings, backends)
    first = await import_all(catalog, requests(len(vectors), 1.0))
    index_s = await asyncio.to_thread(settle, backends.store)
    calls = triton.calls
    again = await import_all(catalog, requests(len(vectors), 1.0))  # the unchanged catalog again
    repriced = await import_all(catalog, requests(len(vectors), 2.0))  # unchanged images, every price new
    await asyncio.to_thread(settle, backends.store)
    start = time.perf_counter()
    stats = await catalog.stats()
    stats_s = time.perf_counter() - start
    return {"first_s": first, "first_index_s": index_s, "unchanged_s": again, "repriced_s": repriced,
            "triton_calls_first": calls, "triton_calls_unchanged": triton.calls - calls, "stats_s": stats_s,
            "stats": {"products": stats.products, "images": stats.images, "vectors": stats.vectors}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--dimension", type=int, default=1280, help="the default embedder's (EfficientNet-Lite0)")
    parser.add_argument("--import-concurrency", type=int, default=64)
    parser.add_argument("--stats-rows", default="10000,100000,1000000",
                        help="GetCatalogStats timed as a collection grows to these row counts (empty: skip)")
    parser.add_argument("--work", type=Path, default=BUILD / "write-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks-write.md")
    args = parser.parse_args(argv)
    # pymilvus is chatty at INFO: only this tool's progress is
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)
    vectors = unit_vectors(args.images * (OBJECTS_PER_IMAGE + 1), args.dimension, 0).reshape(
        args.images, OBJECTS_PER_IMAGE + 1, args.dimension)
    server = MilvusServer(args.work / "milvus").start()
    try:
        base = dataclasses.replace(Settings.from_env({}), milvus_uri=server.uri,
                                   import_concurrency=args.import_concurrency)
        models = precomputed_models(args.dimension)
        raw_s, raw_index_s = raw_insert(dataclasses.replace(base, milvus_collection="raw_insert"), vectors, models)
        path = asyncio.run(write_path(dataclasses.replace(base, milvus_collection="write_path"), vectors))
        stats = stats_at_scale(dataclasses.replace(base, milvus_collection="stats"),
                               [int(n) for n in args.stats_rows.split(",") if n])
    finally:
        server.remove()
    n = args.images
    result = {"machine": machine(), "images": n, "rows": n * (OBJECTS_PER_IMAGE + 1), "dimension": args.dimension,
              "raw_images_per_s": n / raw_s, "write_path_images_per_s": n / path["first_s"],
              "ratio_to_raw": raw_s / path["first_s"], "raw_index_s": raw_index_s,
              "unchanged_reimport_fraction": path["unchanged_s"] / path["first_s"],
              **path, "stats_at_scale": stats}
    lines = [
        "# Catalog write path (`make bench-write`)", "",
        f"Machine: {result['machine']}. Command: `python -m tools.bench.write --images {n} --dimension "
        f"{args.dimension}`; the real Milvus 2.3.5 standalone server (the `milvus` wheel), precomputed vectors "
        f"(no Triton), {OBJECTS_PER_IMAGE + 1} rows per image (objects + whole image).", "",
        "| | images/s | seconds |", "|---|---|---|",
        f"| raw insert of the same rows (the limit) | {result['raw_images_per_s']:.0f} | {raw_s:.1f} |",
        f"| write path (`ImportProducts` logic, batched; 256 products per call, 8 calls at once) | "
        f"{result['write_path_images_per_s']:.0f} | "
        f"{path['first_s']:.1f} |",
        f"| re-import of the unchanged catalog | {n / path['unchanged_s']:.0f} | {path['unchanged_s']:.1f} |",
        f"| re-import with every price changed (images unchanged) | {n / path['repriced_s']:.0f} | "
        f"{path['repriced_s']:.1f} |", "",
        f"Each timed phase starts once the server has indexed the rows of the phase before (flush, then wait "
        f"until the index covers every row: {raw_index_s:.0f} s after the raw insert, {path['first_index_s']:.0f} s "
        "after the first import; HNSW builds in the background on the same two cores, and a phase that ran "
        "during the previous phase's build would pay for it).", "",
        f"Write path / raw insert: **{result['ratio_to_raw']:.0%}**. Unchanged re-import: "
        f"{result['unchanged_reimport_fraction']:.0%} of the first import's time here, with "
        f"{path['triton_calls_unchanged']} Triton calls (first import: {path['triton_calls_first']}); against "
        "a first import that also embeds on a CPU pod (~0.25 s per image), see docs/catalog.md "
        "('Incremental sync'; `make eval` times it).",
        "", f"`GetCatalogStats` at {path['stats']['vectors']} vectors: {path['stats_s'] * 1000:.0f} ms "
        f"({path['stats']})."]
    if stats:
        lines += ["", "`GetCatalogStats` as one collection grows (three counts inside Milvus: rows flagged as a "
                  "product's first, as an image's first, and all rows; Bounded consistency; 8-d vectors, which "
                  "counting does not read; median and worst of 5 calls):", "",
                  "| rows | products | median ms | worst ms |", "|---|---|---|---|"]
        lines += [f"| {r['rows']:,} | {r['products']:,} | {r['median_ms']:.0f} | {r['max_ms']:.0f} |" for r in stats]
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps(result, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
