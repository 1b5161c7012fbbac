"""Synchronous calls of the ensembles for tests of the inference tier (the requests come
from the service's own Triton contract module; the outputs are returned as Triton sends
them, the whole image as the last row)."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient

from services.search import triton_client as tc


def detect_and_embed(client: grpcclient.InferenceServerClient, data: bytes, max_objects: int | None = None,
                     min_score: float = 0.0) -> dict[str, np.ndarray]:
    result = client.infer(*tc.detect_request(data, max_objects, min_score))
    out = {name: result.as_numpy(name) for name in tc.DETECT_OUTPUTS}
    out[tc.LABELS] = [label.decode() for label in out[tc.LABELS]]
    return out


def embed_region(client: grpcclient.InferenceServerClient, data: bytes, region) -> dict[str, np.ndarray]:
    row = tc.region_from(client.infer(*tc.region_request(data, tuple(region))), "region")
    return {tc.EMBEDDINGS: row.embeddings, tc.BOXES: row.boxes}
