"""Between protobuf messages and what Triton and Milvus hold."""

from __future__ import annotations

from typing import Any

from services.api import pb
from services.domain import WHOLE_IMAGE_LABEL, ModelVersions
from services.search import product_fields
from services.search.errors import ServiceError
from services.search.milvus_store import Hit


def box(values: Any) -> pb.BoundingBox:
    x1, y1, x2, y2 = (float(v) for v in values)
    return pb.BoundingBox(x_min=x1, y_min=y1, x_max=x2, y_max=y2)


def box_fields(values: Any) -> dict[str, float]:
    """A box as a JSON object for Milvus (Milvus 2.3 JSON fields must be objects)."""
    x1, y1, x2, y2 = (float(v) for v in values)
    return {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2}


def match(hit: Hit) -> pb.Match:
    f = hit.fields
    product = pb.Product(product_id=f["product_id"], **product_fields.product_values(f))
    return pb.Match(product_id=f["product_id"], image_id=f["image_id"], similarity=hit.similarity,
                    product=product, catalog_box=pb.BoundingBox(**f["box"]),
                    whole_image=f["label"] == WHOLE_IMAGE_LABEL)


def model_info(models: ModelVersions) -> pb.ModelInfo:
    return pb.ModelInfo(detector=models.detector, detector_sha256=models.detector_sha256,
                        embedder=models.embedder, embedder_sha256=models.embedder_sha256,
                        embedding_dimension=models.dimension,
                        recommended_min_similarity=models.recommended_min_similarity,
                        detection_score_threshold=models.detection_score_threshold,
                        max_detected_objects=models.max_detected_objects)


def status(error: ServiceError | None) -> pb.Status:
    """A per-item status (OK when ``error`` is None)."""
    if error is None:
        return pb.Status(code=0, message="")
    return pb.Status(code=error.code.value[0], message=str(error))
