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
