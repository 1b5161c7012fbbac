"""The detector head's cheaper graphs compute what Ultralytics' exported ones compute.

The graph below is built node for node as the Ultralytics ONNX export writes YOLO-World's
contrastive head and the DFL decoding (the names and shapes of tools/models/detector_head.py's
patterns), with random weights; the served detector's outputs are checked on real photos by the
inference tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tools.models.detector_head import fuse_head
from tools.models.prepare import prune

C, K, H, W, BINS, ANCHORS = 8, 3, 4, 5, 16, 7
CIN = 5  # the channels of the projection a YOLO-World head's features come from (128 -> 512 there)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def _exported_head(rng: np.random.Generator, projected: bool = False) -> onnx.ModelProto:
    """``features`` [b, C, H, W] -> contrastive scores [b, K, H, W]; ``dist`` [b, 4*BINS, A] ->
    the expected bin per side [b, 4, A]. ``projected``: the features are a 1x1 convolution of
    ``x`` [b, CIN, H, W], as in YOLO-World, and the graph's input is ``x``."""
    inits = [
        _const("text", rng.normal(size=(1, K, C)).astype(np.float32)),
        _const("eps", np.array(1e-12, np.float32)),
        _const("logit_scale", np.array(0.7, np.float32)),
        _const("bias", np.array(-1.5, np.float32)),
        _const("flat", np.array([0, C, -1], np.int64)),
        _const("grid", np.array([0, K, H, W], np.int64)),
        _const("dfl_shape", np.array([0, 4, BINS, -1], np.int64)),
        _const("dfl_out", np.array([0, 4, -1], np.int64)),
        _const("dfl_weight", np.arange(BINS, dtype=np.float32).reshape(1, BINS, 1, 1)),
    ]
    nodes = [
        # the class embeddings, normalised in the graph
        helper.make_node("ReduceL2", ["text"], ["text_norm"], axes=[-1], keepdims=1),
        helper.make_node("Clip", ["text_norm", "eps"], ["text_clipped"]),
        helper.make_node("Div", ["text", "text_clipped"], ["text_unit"]),
        # every cell's feature divided by its norm
        helper.make_node("ReduceL2", ["features"], ["norm"], axes=[1], keepdims=1),
        helper.make_node("Clip", ["norm", "eps"], ["clipped"]),
        helper.make_node("Shape", ["features"], ["shape"]),
        helper.make_node("Expand", ["clipped", "shape"], ["expanded"]),
        helper.make_node("Div", ["features", "expanded"], ["unit"]),
        helper.make_node("Reshape", ["unit", "flat"], ["unit_flat"]),
        helper.make_node("MatMul", ["text_unit", "unit_flat"], ["dot"]),
        helper.make_node("Reshape", ["dot", "grid"], ["dot_grid"]),
        helper.make_node("Exp", ["logit_scale"], ["scale"]),
        helper.make_node("Mul", ["dot_grid", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["scores"]),
        # DFL: softmax over the bins on a transposed copy, then the bins' values
        helper.make_node("Reshape", ["dist", "dfl_shape"], ["dist4"]),
        helper.make_node("Transpose", ["dist4"], ["dist_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Softmax", ["dist_t"], ["probs"], axis=1),
        helper.make_node("Conv", ["probs", "dfl_weight"], ["expected"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["expected", "dfl_out"], ["sides"]),
    ]
    first = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", C, H, W])
    if projected:
        inits += [_const("proj_w", rng.normal(size=(C, CIN, 1, 1)).astype(np.float32)),
                  _const("proj_b", rng.normal(size=C).astype(np.float32))]
        nodes.insert(0, helper.make_node("Conv", ["x", "proj_w", "proj_b"], ["features"], kernel_shape=[1, 1]))
        first = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", CIN, H, W])
    graph = helper.make_graph(
        nodes, "head",
        [first,
         helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["batch", 4 * BINS, ANCHORS])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", K, H, W]),
         helper.make_tensor_value_info("sides", TensorProto.FLOAT, ["batch", 4, ANCHORS])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["scores", "sides"], feeds)


def test_fused_head_computes_the_exported_heads_outputs() -> None:
    rng = np.random.default_rng(0)
    exported = _exported_head(rng)
    # logits up to +-30 as a confident box side has them: the max-shifted exponent must not overflow
    feeds = {"features": rng.normal(size=(2, C, H, W)).astype(np.float32),
             "dist": rng.uniform(-30, 30, size=(2, 4 * BINS, ANCHORS)).astype(np.float32)}
    fused = prune(fuse_head(exported))
    onnx.checker.check_model(fused, full_check=True)
    ops = [n.op_type for n in fused.graph.node]
    assert "MatMul" not in ops and "Softmax" not in ops and "Transpose" not in ops
    want, got = _run(exported, feeds), _run(fused, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)
    assert np.isfinite(got[1]).all()


def test_a_graph_without_the_pieces_is_left_as_it_is() -> None:
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "plain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fuse_head(model).SerializeToString() == model.SerializeToString()


def test_a_head_whose_class_side_depends_on_the_input_is_not_folded() -> None:
    """Only constant class embeddings can become convolution weights."""
    rng = np.random.default_rng(1)
    model = _exported_head(rng)
    graph = model.graph
    # the class embeddings now scaled by the mean of the input
    graph.node.insert(0, helper.make_node("ReduceMean", ["features"], ["level"], keepdims=0))
    graph.node.insert(1, helper.make_node("Mul", ["text_const", "level"], ["text"]))
    text = next(i for i in graph.initializer if i.name == "text")
    text.name = "text_const"
    feeds = {"features": rng.normal(size=(1, C, H, W)).astype(np.float32),
             "dist": rng.normal(size=(1, 4 * BINS, ANCHORS)).astype(np.float32)}
    fused = prune(fuse_head(model))
    ops = [n.op_type for n in fused.graph.node]
    assert "MatMul" in ops and "Softmax" not in ops  # the head kept, the DFL decoder rewritten
    for got, want in zip(_run(fused, feeds), _run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _projected_feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.normal(size=(2, CIN, H, W)).astype(np.float32),
            "dist": rng.normal(size=(2, 4 * BINS, ANCHORS)).astype(np.float32)}


def test_the_features_projection_folds_into_the_head() -> None:
    """The C-channel features are never made: the class side and the norm read the projection's
    CIN-channel input (YOLO-World: 128 channels instead of 512)."""
    rng = np.random.default_rng(2)
    exported = _exported_head(rng, projected=True)
    feeds = _projected_feeds(rng)
    fused = prune(fuse_head(exported))
    onnx.checker.check_model(fused, full_check=True)
    assert {i.name for i in fused.graph.initializer}.isdisjoint({"proj_w", "proj_b"})
    widths = [numpy_helper.to_array(i).shape[0] for i in fused.graph.initializer
              if any(n.op_type == "Conv" and n.input[1] == i.name for n in fused.graph.node)]
    assert C not in widths and max(widths) <= max(K, CIN), widths
    want, got = _run(exported, feeds), _run(fused, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)


def test_features_read_elsewhere_keep_their_projection() -> None:
    """A projection whose output something else reads too is left as it is (the head is still rewritten)."""
    rng = np.random.default_rng(3)
    model = _exported_head(rng, projected=True)
    model.graph.output.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", C, H, W]))
    feeds = _projected_feeds(rng)
    fused = prune(fuse_head(model))
    assert "proj_w" in {i.name for i in fused.graph.initializer}
    assert "MatMul" not in [n.op_type for n in fused.graph.node]
    for got, want in zip(_run(fused, feeds), _run(model, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
