"""Catalog importer: a folder of images or a CSV/JSONL manifest -> the ImportProducts API.

    python -m services.importer --address 127.0.0.1:50051 --folder photos/ [--category shoes]
    python -m services.importer --address 127.0.0.1:50051 --manifest catalog.jsonl
    python -m services.importer --address search:50051 --manifest catalog.jsonl \
        --tls-ca ca.pem --tls-cert importer.pem --tls-key importer-key.pem     # mutual TLS

Folder: every sub-folder is a product (its name is the product id, each image file an image
whose id is the file name without extension); image files directly in the folder are
products with one image ("main").

Manifest (CSV with a header, or JSON Lines), one row per image; rows sharing a product_id
form one product:  product_id, image_path (relative to the manifest), image_id (default:
file stem), mode (detect | whole_image), and a column per product field (category, price,
title, attributes: a JSON object, in CSV also ``attr.<key>`` columns; see
``services/search/product_fields.py``).

Re-runs are safe and cheap: the API is idempotent by product and image id, and the service
does not embed an image again whose bytes, mode and models are unchanged. Products go in
chunks (one streaming call each, --concurrency of them at once: a call ends by waiting until
its rows are searchable, a few hundred milliseconds that the other calls fill); a chunk that
meets UNAVAILABLE or RESOURCE_EXHAUSTED is retried with backoff. An interrupted run of the
same catalog into the same service resumes after the last chunk finished with all chunks
before it (its place is kept in ~/.cache/visualsearch/imports; --restart starts over); the
progress bar shows the ETA. Exit code 0 when every image was imported, 1
when some failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from services.api import pb, pb_grpc
from services.channels import PLAINTEXT, ClientConfigError, ClientSecurity
from services.search.product_fields import manifest_values

log = logging.getLogger("services.importer")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif"}
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
MODES = {"detect": pb.EMBED_MODE_DETECT, "whole_image": pb.EMBED_MODE_WHOLE_IMAGE}


class ManifestError(ValueError):
    """A manifest row cannot be turned into a product; the message names the row."""


@dataclass
class ProductSpec:
    product_id: str
    images: list[tuple[str, Path, int]] = field(default_factory=list)  # (image id, path, mode)
    fields: dict[str, Any] = field(default_factory=dict)  # Product fields (product_fields.PRODUCT_FIELDS)


@dataclass
class Summary:
    products_imported: int = 0
    images_ok: int = 0
    vectors: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (product, image, reason)

    @property
    def images_failed(self) -> int:
        return len(self.failures)

    def add(self, response: pb.ImportProductsResponse) -> None:
        """Count one ImportProducts answer."""
        self.products_imported += response.products_imported
        self.vectors += response.vectors_written
        for item in response.items:
            if item.status.code == 0:
                self.images_ok += 1
            else:
                self.failures.append((item.product_id, item.image_id, item.status.message))


def _category(category: str) -> dict[str, Any]:
    return {"category": category} if category else {}


def from_folder(folder: Path, category: str = "") -> list[ProductSpec]:
    products: list[ProductSpec] = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            images = [(p.stem, p, pb.EMBED_MODE_DETECT) for p in sorted(entry.iterdir())
                      if p.suffix.lower() in IMAGE_SUFFIXES]
            if images:
                products.append(ProductSpec(entry.name, images, _category(category)))
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            products.append(ProductSpec(entry.stem, [("main", entry, pb.EMBED_MODE_DETECT)], _category(category)))
    return products


def _rows(manifest: Path) -> Iterator[tuple[int, dict]]:
    if manifest.suffix.lower() == ".jsonl":
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(f"{manifest}:{number}: not valid JSON: {exc}") from None
    elif manifest.suffix.lower() == ".csv":
        with open(manifest, newline="") as fh:
            for number, row in enumerate(csv.DictReader(fh), start=2):
                yield number, row
    else:
        raise ManifestError(f"{manifest}: manifest must end in .csv or .jsonl")


def from_manifest(manifest: Path) -> list[ProductSpec]:
    products: dict[str, ProductSpec] = {}
    for number, row in _rows(manifest):
        where = f"{manifest}:{number}"
        pid, path = str(row.get("product_id") or "").strip(), str(row.get("image_path") or "").strip()
        if not pid or not path:
            raise ManifestError(f"{where}: product_id and image_path are required")
        try:
            values = manifest_values(row, where)
        except ValueError as exc:
            raise ManifestError(str(exc)) from None
        mode = str(row.get("mode") or "detect")
        if mode not in MODES:
            raise ManifestError(f"{where}: mode must be one of {sorted(MODES)}")
        spec = products.setdefault(pid, ProductSpec(pid))
        for name, value in values.items():  # rows of one product add to its maps and fill in its values
            spec.fields[name] = {**spec.fields[name], **value} if isinstance(value, dict) and name in spec.fields \
                else value
        image_path = (manifest.parent / path).resolve()
        spec.images.append((str(row.get("image_id") or Path(path).stem), image_path, MODES[mode]))
    return list(products.values())


def product_request(spec: ProductSpec, summary: Summary) -> pb.ImportProductsRequest | None:
    """The ImportProducts message of one product (its image files read); unreadable files go
    to ``summary`` and a product with none left is None."""
    images = []
    for image_id, path, mode in spec.images:
        try:
            images.append(pb.ProductImage(image_id=image_id, content=path.read_bytes(), mode=mode))
        except OSError as exc:
            summary.failures.append((spec.product_id, image_id, f"cannot read file: {path}: {exc.strerror}"))
    if not images:
        return None
    return pb.ImportProductsRequest(
        product=pb.Product(product_id=spec.product_id, **spec.fields), images=images)


class Importer:
    def __init__(self, address: str, chunk: int = 32, retries: int = 5, timeout_s: float = 600,
                 security: ClientSecurity = PLAINTEXT, concurrency: int = 4) -> None:
        self.channel = security.channel(address)
        self.stub = pb_grpc.CatalogStub(self.channel)
        self.chunk, self.retries, self.timeout_s, self.concurrency = chunk, retries, timeout_s, concurrency

    def close(self) -> None:
        self.channel.close()

    def _send(self, requests: list[pb.ImportProductsRequest]) -> pb.ImportProductsResponse:
        for attempt in range(self.retries + 1):
            try:
                return self.stub.ImportProducts(iter(requests), timeout=self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self.retries:
                    raise
                delay = min(30.0, 2.0 ** attempt)
                log.warning("import chunk failed (%s: %s); retrying in %.0fs", exc.code().name, exc.details(), delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def run(self, products: list[ProductSpec], progress: bool = True, state: ImportState | None = None) -> Summary:
        """Import ``products`` chunk by chunk, ``concurrency`` chunks at once; with ``state``,
        start after the products a previous interrupted run of the same catalog finished, and
        record progress as chunks finish in order (the state is removed when the run ends)."""
        summary = Summary()
        first = state.products_done() if state else 0
        if first:
            log.info("resuming after %d of %d products (%s; --restart to start over)", first, len(products),
                     state.path)
        bar = tqdm(total=sum(len(p.images) for p in products), unit="img", disable=not progress, file=sys.stderr,
                   initial=sum(len(p.images) for p in products[:first]))
        in_flight: deque[tuple[int, list[ProductSpec], Future | None]] = deque()  # in product order

        def finish_oldest() -> None:
            start, chunk, call = in_flight.popleft()
            if call is not None:
                summary.add(call.result())
            bar.update(sum(len(p.images) for p in chunk))
            bar.set_postfix(failed=summary.images_failed)
            if state:
                state.save(start + len(chunk))

        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="import")
        try:
            for start in range(first, len(products), self.chunk):
                chunk = products[start:start + self.chunk]
                requests = [r for r in (product_request(spec, summary) for spec in chunk) if r is not None]
                in_flight.append((start, chunk, pool.submit(self._send, requests) if requests else None))
                if len(in_flight) >= self.concurrency:
                    finish_oldest()
            while in_flight:
                finish_oldest()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        if state:
            state.remove()
        return summary


class ImportState:
    """Where an interrupted import of one catalog into one service stopped: a small JSON file
    in the cache, keyed by the catalog's content (ids, paths, attributes) and the address."""

    def __init__(self, products: list[ProductSpec], address: str, folder: Path | None = None) -> None:
        digest = hashlib.sha256(address.encode())
        for spec in products:
            digest.update(json.dumps([spec.product_id, [(i, str(p), m) for i, p, m in spec.images], spec.fields],
                                     sort_keys=True).encode())
        folder = folder or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visualsearch" / "imports"
        self.path = folder / f"{digest.hexdigest()[:32]}.json"

    def products_done(self) -> int:
        try:
            return int(json.loads(self.path.read_text())["products_done"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def save(self, products_done: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"products_done": products_done, "saved": time.time()}))
        tmp.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def print_summary(summary: Summary, out=None) -> None:  # noqa: ANN001 - a text stream, stdout by default
    out = out or sys.stdout
    print(f"imported {summary.products_imported} products, {summary.images_ok} images, "
          f"{summary.vectors} vectors; {summary.images_failed} images failed", file=out)
    if summary.failures:
        reasons = Counter(reason.split(":")[0] for _, _, reason in summary.failures)
        print("failures by reason:", file=out)
        for reason, count in reasons.most_common():
            print(f"  {count:6d}  {reason}", file=out)
        print("failed images (first 20):", file=out)
        for pid, image_id, reason in summary.failures[:20]:
            print(f"  {pid}/{image_id}: {reason}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051", help="search service host:port")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path)
    source.add_argument("--manifest", type=Path)
    parser.add_argument("--category", default="", help="category for --folder imports")
    parser.add_argument("--chunk", type=int, default=32,
                        help="products per streaming call (a GPU Triton embeds ~1,000 images/s: use ~256 there)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="streaming calls at once (each ends with a ~0.3 s wait until its rows are searchable; "
                             "use 8 with --chunk 256 against a GPU Triton)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--restart", action="store_true",
                        help="ignore where an interrupted run of this catalog stopped and start from the first product")
    ClientSecurity.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        products = from_folder(args.folder, args.category) if args.folder else from_manifest(args.manifest)
    except (ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not products:
        print("error: nothing to import", file=sys.stderr)
        return 2
    try:
        if args.chunk < 1 or args.concurrency < 1:
            raise ClientConfigError("--chunk and --concurrency must be at least 1")
        importer = Importer(args.address, chunk=args.chunk, security=ClientSecurity.from_args(args),
                            concurrency=args.concurrency)
    except (ClientConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        state = ImportState(products, args.address)
        if args.restart:
            state.remove()
        summary = importer.run(products, progress=not args.no_progress, state=state)
    except grpc.RpcError as exc:
        print(f"error: import stopped: {exc.code().name}: {exc.details()} (safe to re-run)", file=sys.stderr)
        return 1
    finally:
        importer.close()
    print_summary(summary)
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    sys.exit(main())
