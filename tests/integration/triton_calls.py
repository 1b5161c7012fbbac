"""Synchronous calls of the ensembles for tests of the inference tier (the requests come
from the service's own Triton contract module)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from services.search import triton_client as tc


def detect_and_embed(client: grpcclient.InferenceServerClient, data: bytes) -> dict[str, np.ndarray]:
    found = tc.objects_from(client.infer(*tc.detect_request(data)))
    return {tc.BOXES: found.boxes, tc.SCORES: found.scores, tc.LABELS: found.labels,
            tc.EMBEDDINGS: found.embeddings, tc.FALLBACK: np.array([found.fallback])}


def embed_region(client: grpcclient.InferenceServerClient, data: bytes, region) -> dict[str, np.ndarray]:
    embeddings, boxes = tc.region_from(client.infer(*tc.region_request(data, tuple(region))))
    return {tc.EMBEDDINGS: embeddings, tc.BOXES: boxes}
