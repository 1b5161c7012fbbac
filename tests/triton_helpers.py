"""Small synchronous tritonclient helpers for tests of the inference tier."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient


def detect_and_embed(client: grpcclient.InferenceServerClient, data: bytes) -> dict[str, np.ndarray]:
    image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    result = client.infer("detect_and_embed", [image])
    out = {name: result.as_numpy(name) for name in ("BOXES", "SCORES", "LABELS", "EMBEDDINGS", "FALLBACK")}
    out["LABELS"] = [label.decode() for label in out["LABELS"]]
    return out


def embed_region(client: grpcclient.InferenceServerClient, data: bytes, region) -> dict[str, np.ndarray]:
    image = grpcclient.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=np.object_))
    box = grpcclient.InferInput("REGION", [4], "FP32")
    box.set_data_from_numpy(np.asarray(region, np.float32))
    result = client.infer("embed_region", [image, box])
    return {name: result.as_numpy(name) for name in ("EMBEDDINGS", "BOXES")}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
