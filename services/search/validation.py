"""Checks of every caller-given value, with the message the caller gets (INVALID_ARGUMENT)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from services.api import pb
from services.search import product_fields as pf
from services.search.config import Settings
from services.search.errors import InvalidInput
from services.search.filters import build_expression
from services.search.product_fields import check_id

MAX_DELETE_IDS = 1000

Region = tuple[float, float, float, float]


def check_image(data: bytes, what: str, settings: Settings) -> None:
    if not data:
        raise InvalidInput(f"{what} is empty")
    if len(data) > settings.max_image_bytes:
        raise InvalidInput(f"{what} is {len(data)} bytes, above the limit of "
                           f"{settings.max_image_bytes} bytes (VS_MAX_IMAGE_BYTES)")


def check_region(box: pb.BoundingBox, what: str) -> Region:
    coords = (box.x_min, box.y_min, box.x_max, box.y_max)
    if not all(math.isfinite(c) for c in coords):
        raise InvalidInput(f"{what} has a non-finite coordinate")
    if box.x_max <= box.x_min or box.y_max <= box.y_min or box.x_max <= 0 or box.y_max <= 0:
        raise InvalidInput(f"{what} must satisfy x_max > x_min and y_max > y_min (original pixels), got "
                           f"({box.x_min}, {box.y_min}, {box.x_max}, {box.y_max})")
    return coords


@dataclass(frozen=True)
class SearchQuery:
    """A validated SearchByImageRequest."""

    image: bytes
    top_k: int
    region: Region | None
    expression: str  # Milvus filter expression, '' = everything
    max_objects: int  # the request's, or VS_MAX_SEARCHED_OBJECTS for 0
    min_detection_score: float
    min_similarity: float
    skip_whole_image: bool = False
    use_recommended_min_similarity: bool = False
    include_tentative_objects: bool = False


def check_search(req: pb.SearchByImageRequest, settings: Settings) -> SearchQuery:
    check_image(req.image, "image", settings)
    top_k = req.top_k or settings.default_top_k
    if not 1 <= top_k <= settings.max_top_k:
        raise InvalidInput(f"top_k must be 1..{settings.max_top_k}, got {req.top_k}")
    if req.max_objects < 0:
        raise InvalidInput(f"max_objects must be >= 0, got {req.max_objects}")
    if not 0 <= req.min_detection_score <= 1:
        raise InvalidInput(f"min_detection_score must be 0..1, got {req.min_detection_score}")
    if not -1 <= req.min_similarity <= 1:
        raise InvalidInput(f"min_similarity must be -1..1, got {req.min_similarity}")
    expression = build_expression(req.filter)
    region = check_region(req.region, "region") if req.HasField("region") else None
    return SearchQuery(req.image, top_k, region, expression, req.max_objects or settings.max_searched_objects,
                       req.min_detection_score, req.min_similarity, req.skip_whole_image,
                       req.use_recommended_min_similarity, req.include_tentative_objects)


def check_batch(req: pb.BatchSearchByImageRequest, settings: Settings) -> None:
    if not 1 <= len(req.requests) <= settings.max_batch_images:
        raise InvalidInput(f"requests must hold 1..{settings.max_batch_images} images "
                           f"(VS_MAX_BATCH_IMAGES), got {len(req.requests)}")


def check_product(req: pb.ImportProductsRequest, settings: Settings) -> dict[str, Any]:
    """The product's stored values (every field of ``PRODUCT_FIELDS``), checked."""
    p = req.product
    check_id(p.product_id, "product.product_id")
    values = pf.stored_values(p)
    if not 1 <= len(req.images) <= settings.max_images_per_product:
        raise InvalidInput(f"a product needs 1..{settings.max_images_per_product} images "
                           f"(VS_MAX_IMAGES_PER_PRODUCT), got {len(req.images)}")
    ids = [check_id(img.image_id, "image_id") for img in req.images]
    if len(set(ids)) != len(ids):
        raise InvalidInput("image_id values must be unique within a product")
    return values


def check_delete(req: pb.DeleteProductsRequest) -> list[str]:
    if not 1 <= len(req.product_ids) <= MAX_DELETE_IDS:
        raise InvalidInput(f"product_ids must hold 1..{MAX_DELETE_IDS} ids, got {len(req.product_ids)}")
    return [check_id(pid, "product_id") for pid in req.product_ids]
