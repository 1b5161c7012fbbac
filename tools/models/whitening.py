"""A learned projection of a served embedder to fewer dimensions (PCA-whitening), baked into
its graph so Triton returns short unit vectors.

Fitted once per model on a reference set kept apart from every test and evaluation image:
random crops of the calibration photos (Debian ``mate-backgrounds``). ``power`` 0.5 is full
whitening (each principal direction scaled to unit variance), 0 a plain PCA projection.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tools.models import calibration
from tools.models import manifest as mf
from tools.models.prepare import EMBED_INPUT, EMBED_OUTPUT, free_prefix, opset, rename_tensor

log = logging.getLogger(__name__)

CROPS_PER_PHOTO = 240
EPSILON = 1e-6


def reference_vectors(model_path: Path, size: int, photos: list[Path], per_photo: int = CROPS_PER_PHOTO) -> np.ndarray:
    """The served model's unit vectors of the reference crops."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    crops = np.concatenate(calibration.embedder_inputs(photos, size, per_photo=per_photo, seed=7))
    return np.concatenate([session.run([EMBED_OUTPUT], {EMBED_INPUT: crops[i:i + 64]})[0]
                           for i in range(0, len(crops), 64)])


def fit(vectors: np.ndarray, dimension: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection DxK) of PCA-whitening to ``dimension`` directions."""
    if dimension > min(vectors.shape):
        raise ValueError(f"cannot fit {dimension} directions on {vectors.shape[0]} vectors of {vectors.shape[1]}")
    mean = vectors.mean(0)
    centred = vectors - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(vectors))
    order = np.argsort(eigvals)[::-1][:dimension]
    projection = eigvecs[:, order] * (eigvals[order] + EPSILON) ** -power
    return mean.astype(np.float32), projection.astype(np.float32)


def bake(model: onnx.ModelProto, mean: np.ndarray, projection: np.ndarray) -> onnx.ModelProto:
    """The graph with ``embedding`` := l2norm((embedding - mean) @ projection)."""
    graph = model.graph
    prefix = free_prefix(graph)
    full = prefix + "full_embedding"
    rename_tensor(graph, EMBED_OUTPUT, full)
    graph.initializer.extend([numpy_helper.from_array(mean, prefix + "pca_mean"),
                              numpy_helper.from_array(projection, prefix + "pca_w"),
                              numpy_helper.from_array(np.array([1e-12], np.float32), prefix + "pca_eps"),
                              numpy_helper.from_array(np.array([1], np.int64), prefix + "pca_axes")])
    graph.node.extend([
        helper.make_node("Sub", [full, prefix + "pca_mean"], [prefix + "centred"]),
        helper.make_node("MatMul", [prefix + "centred", prefix + "pca_w"], [prefix + "projected"]),
        helper.make_node("ReduceL2", [prefix + "projected"], [prefix + "norm"], keepdims=1, axes=[1])
        if opset(model) < 18 else
        helper.make_node("ReduceL2", [prefix + "projected", prefix + "pca_axes"], [prefix + "norm"], keepdims=1),
        helper.make_node("Max", [prefix + "norm", prefix + "pca_eps"], [prefix + "safe"]),
        helper.make_node("Div", [prefix + "projected", prefix + "safe"], [EMBED_OUTPUT]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(EMBED_OUTPUT, TensorProto.FLOAT, ["batch", projection.shape[1]]))
    return model


def project(served: Path, dimension: int, photos: list[Path], source: str, power: float = 0.5) -> dict:
    """Fit and bake the projection into ``served`` (model + manifest, in place); returns the
    manifest's ``projection`` entry."""
    manifest = mf.load(served)
    size = int(manifest["serving"]["input"]["shape"][-1])
    full_dim = int(manifest["serving"]["output"]["shape"][0])
    vectors = reference_vectors(served / mf.MODEL_NAME, size, photos)
    mean, projection = fit(vectors, dimension, power)
    model = onnx.load(str(served / mf.MODEL_NAME))
    model = bake(model, mean, projection)
    onnx.checker.check_model(model)
    onnx.save(model, str(served / mf.MODEL_NAME))
    entry = {"method": "pca-whitening" if power else "pca", "power": power, "from_dimension": full_dim,
             "dimension": dimension, "reference": {"source": source, "photos": len(photos), "crops": len(vectors)}}
    manifest["projection"] = entry
    manifest["serving"]["output"]["shape"] = [dimension]
    manifest["serving"]["onnx_sha256"] = mf.sha256_file(served / mf.MODEL_NAME)
    mf.save(served, manifest)
    log.info("projected %s from %d to %d dimensions (%s, %d reference crops)", manifest["name"], full_dim,
             dimension, entry["method"], len(vectors))
    return entry
