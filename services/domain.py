"""What both sides of Triton agree on: the labels of rows that are not detections, and which
models (and settings) produced a vector. The Triton models and the search service import it;
both images copy it."""

from __future__ import annotations

from dataclasses import dataclass

WHOLE_IMAGE_LABEL = "image"  # a photo's (or catalog image's) whole-image row
REGION_LABEL = "region"  # a caller-given region's row
TENTATIVE_LABEL = "object"  # a tentative detection's label: its class guess is mostly wrong


@dataclass(frozen=True)
class ModelVersions:
    """The served models, as Triton's ``model_info`` reports them from their manifests and
    the postprocess config: what the vectors came from and what the models recommend."""

    detector: str
    detector_sha256: str
    embedder: str
    embedder_sha256: str
    dimension: int
    pipeline: str = ""  # fingerprint of the image pipeline's settings
    # The embedder's measured threshold (`make eval`: below it most rank-1 answers are wrong);
    # 0 when its manifest has none.
    recommended_min_similarity: float = 0.0
    detection_score_threshold: float = 0.0  # postprocess score_threshold: no box scores below it
    max_detected_objects: int = 0  # postprocess max_objects: at most this many boxes per photo
