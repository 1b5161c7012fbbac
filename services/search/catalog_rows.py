"""One product's rows, prepared for writing: pure functions of the request, its stored rows
and its images' embeddings (no I/O; ``catalog.py`` does the reading, embedding and writing).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.api import pb
from services.domain import ModelVersions
from services.search import mapping
from services.search import product_fields as pf
from services.search.errors import ServiceError
from services.search.milvus_store import row_key
from services.search.objects import Objects


@dataclass
class Prepared:
    product_id: str
    rows: list[dict[str, Any]]  # empty: nothing to write (invalid, every image failed, or all as stored)
    statuses: list[pb.ImportItemStatus]
    stale: list[str] = field(default_factory=list)  # stored keys the new rows do not replace
    unchanged: bool = False  # every image and value as stored


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


def as_stored(rows: list[dict[str, Any]], stored: list[dict[str, Any]]) -> bool:
    """The new rows equal the stored ones, key for key and field for field."""
    if len(rows) != len(stored):
        return False
    by_key = {row["pk"]: row for row in stored}
    return all(row["pk"] in by_key and all(by_key[row["pk"]].get(k) == v for k, v in row.items() if k != "vector")
               for row in rows)


def fail(prepared: Prepared, error: ServiceError) -> None:
    """Every image of a product that is not written reports ``error``."""
    prepared.statuses = [pb.ImportItemStatus(product_id=s.product_id, image_id=s.image_id, status=mapping.status(error))
                         for s in prepared.statuses]
    prepared.rows = []


def flag_heads(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flag the product's first row and each image's first row (what the stats count)."""
    rows = sorted(rows, key=lambda r: r["pk"])
    seen: set[str] = set()
    for i, row in enumerate(rows):
        row["product_head"] = i == 0
        row["image_head"] = row["image_id"] not in seen
        seen.add(row["image_id"])
    return rows


def by_image(stored: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A product's stored rows per image id, in key order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(stored, key=lambda r: r["pk"]):
        grouped.setdefault(row["image_id"], []).append(row)
    return grouped


def unchanged(stored_rows: list[dict[str, Any]], key: str) -> bool:
    """An image whose stored rows were all made from this content key need not be embedded."""
    return bool(stored_rows) and all(row.get("content_key") == key for row in stored_rows)


def image_rows(pid: str, image_id: str, key: str, rows: Objects, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one embedded image (float32 arrays, not lists: 8x less memory while the rows
    wait for their batch)."""
    return [{"pk": row_key(pid, image_id, k), "product_id": pid, "image_id": image_id,
             "label": rows.labels[k][:pf.LABEL_MAX], "box": mapping.box_fields(rows.boxes[k]),
             "vector": np.asarray(rows.embeddings[k], np.float32), "content_key": key, **values}
            for k in range(len(rows))]


def prepare(pid: str, images: list[pb.ProductImage], keys: list[str], values: dict[str, Any],
            stored: list[dict[str, Any]], outcomes: dict[str, Objects | ServiceError]) -> Prepared:
    """The product's rows and per-image statuses. ``outcomes`` holds the images embedded now
    (their rows or their error); an image absent from it is unchanged. Unchanged and failed
    images keep their stored rows with the new values (their vectors are read back if the
    product is written)."""
    old = by_image(stored)
    rows: list[dict[str, Any]] = []
    statuses = []
    for image, key in zip(images, keys, strict=True):
        outcome = outcomes.get(image.image_id)
        if outcome is None or isinstance(outcome, ServiceError):
            rows += [{**row, **values} for row in old.get(image.image_id, [])]
            count = len(old.get(image.image_id, [])) if outcome is None else 0
            statuses.append(pb.ImportItemStatus(product_id=pid, image_id=image.image_id, vectors=count,
                                                status=mapping.status(outcome)))
            continue
        statuses.append(pb.ImportItemStatus(product_id=pid, image_id=image.image_id, vectors=len(outcome),
                                            status=mapping.status(None)))
        rows += image_rows(pid, image.image_id, key, outcome, values)
    if not any(s.status.code == 0 for s in statuses):
        return Prepared(pid, [], statuses)  # nothing stored changes when every image of the product failed
    rows = flag_heads(rows)
    if not outcomes and as_stored(rows, stored):
        return Prepared(pid, [], statuses, unchanged=True)  # every image and value as stored: nothing to write
    new_keys = {row["pk"] for row in rows}
    return Prepared(pid, rows, statuses, sorted(row["pk"] for row in stored if row["pk"] not in new_keys))


def failed(pid: str, image_ids: list[str], error: ServiceError) -> Prepared:
    """A product none of whose images is written, every one reporting ``error``."""
    return Prepared(pid, [], [pb.ImportItemStatus(product_id=pid, image_id=i, status=mapping.status(error))
                              for i in image_ids or [""]])
