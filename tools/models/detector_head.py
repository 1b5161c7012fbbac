"""Cheaper graphs for two pieces of an Ultralytics detection head, the same function of the input.

onnxruntime's profile of the INT8 YOLOv8s-World (the head stays float, tools/models/quantize.py)
puts two exported pieces far above their arithmetic:

* **The contrastive head** (YOLO-World's ``cv4``): every cell's C-channel feature is divided by
  its L2 norm, then multiplied with the K class embeddings (a MatMul behind Reshapes), scaled and
  shifted. The class embeddings are constants, so this is a 1x1 convolution whose K outputs are
  divided by the cell's norm afterwards: K divisions a cell instead of C (80 against 512), and a
  convolution onnxruntime runs in its blocked layout.
  The C-channel feature is itself a 1x1 convolution ``y = W x + b`` of a narrower map (the last
  layer of ``cv3``: 128 -> 512 channels), with nothing between: the class side folds into it
  (``T y = (T W) x + T b``, K outputs from 128 channels), and with ``W = Q R`` (QR, R square)
  ``|y|^2 = |R x + Q'b|^2 + |b|^2 - |Q'b|^2``, a 128-channel convolution. The 512-channel map is
  never made; about a tenth of the INT8 detector's time on a CPU.
* **The distribution focal loss decoding** (``dfl``): a softmax over each side's R bins, taken on
  a transposed copy (softmax along a middle axis), then a 1x1 convolution with the bin values:
  the expected bin. The same expectation is ``sum(exp(x - max) * bin) / sum(exp(x - max))``
  along the bins where they lie, with no transposes.

Both rewrites reorder float arithmetic only: outputs agree with the exported graph's to float
rounding (tests/unit/test_detector_head.py, and the detector tests on real photos). A graph
without these pieces is returned unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant(graph: onnx.GraphProto, name: str, producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(_attr(node, "value"))
    return None


def _constant_values(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """Those inner tensors of ``model`` that are the same whatever the input (the class
    embeddings), for a batch of one: each is computed for two different inputs, and one that
    differs is left out (its head is not rewritten)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in known)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = []
    for fill in (0, 1):
        feeds = {}
        for inp in session.get_inputs():
            shape = [1 if not isinstance(d, int) else d for d in inp.shape]
            feeds[inp.name] = np.full(shape, fill, np.uint8 if "uint8" in inp.type else np.float32)
        runs.append(session.run(names, feeds))
    return {n: a for n, a, b in zip(names, *runs, strict=True) if np.array_equal(a, b)}


def _contrastive_heads(graph: onnx.GraphProto) -> list[dict]:
    """Each ``Add(Mul(Reshape(MatMul(text, Reshape(Div(x, Expand(Clip(ReduceL2(x))))))), scale), bias)``."""
    producers, consumers = _producers(graph), _consumers(graph)
    found = []
    for add in (n for n in graph.node if n.op_type == "Add"):
        mul = producers.get(add.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        reshape_out = producers.get(mul.input[0])
        matmul = producers.get(reshape_out.input[0]) if reshape_out is not None and reshape_out.op_type == "Reshape" \
            else None
        if matmul is None or matmul.op_type != "MatMul":
            continue
        reshape_in = producers.get(matmul.input[1])
        div = producers.get(reshape_in.input[0]) if reshape_in is not None and reshape_in.op_type == "Reshape" \
            else None
        if div is None or div.op_type != "Div":
            continue
        expand = producers.get(div.input[1])
        clip = producers.get(expand.input[0]) if expand is not None and expand.op_type == "Expand" else None
        norm = producers.get(clip.input[0]) if clip is not None and clip.op_type == "Clip" else None
        if norm is None or norm.op_type != "ReduceL2" or norm.input[0] != div.input[0] \
                or list(_attr(norm, "axes", [])) != [1]:
            continue
        eps = _constant(graph, clip.input[1], producers) if len(clip.input) > 1 and clip.input[1] else None
        bias = _constant(graph, add.input[1], producers)
        if eps is None or bias is None or bias.size != 1:
            continue
        found.append({"add": add, "features": div.input[0], "text": matmul.input[0], "scale": mul.input[1],
                      "eps": float(eps), "bias": float(bias.reshape(-1)[0]),
                      "projection": _projection(graph, div, norm, expand, producers, consumers)})
    return found


def _projection(graph: onnx.GraphProto, div: onnx.NodeProto, norm: onnx.NodeProto, expand: onnx.NodeProto,
                producers: dict[str, onnx.NodeProto], consumers: dict[str, list[onnx.NodeProto]]) -> dict | None:
    """The plain 1x1 convolution that makes the head's features, read by nothing but the head
    (its norm, its division and the Shape its Expand reads; not a graph output), or None."""
    conv = producers.get(div.input[0])
    if conv is None or conv.op_type != "Conv" or len(conv.input) < 2:
        return None
    # the kernel's 1x1 is read from the weight below
    plain = (_attr(conv, "group", 1) == 1
             and all(v == 1 for v in _attr(conv, "strides", [1, 1]))
             and all(v == 1 for v in _attr(conv, "dilations", [1, 1]))
             and all(v == 0 for v in _attr(conv, "pads", [0, 0, 0, 0]))
             and _attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
    if not plain:
        return None
    weight = _constant(graph, conv.input[1], producers)
    bias = _constant(graph, conv.input[2], producers) if len(conv.input) > 2 and conv.input[2] else None
    if weight is None or weight.ndim != 4 or weight.shape[2:] != (1, 1):
        return None
    shape = producers.get(expand.input[1])
    head = {div.output[0], norm.output[0]}
    if shape is not None and shape.op_type == "Shape":
        head.add(shape.output[0])
    features = div.input[0]
    if any(n.output[0] not in head for n in consumers.get(features, [])) \
            or any(o.name == features for o in graph.output):
        return None
    weight = weight[:, :, 0, 0].astype(np.float64)
    return {"input": conv.input[0], "weight": weight,
            "bias": np.zeros(weight.shape[0]) if bias is None else bias.reshape(-1).astype(np.float64)}


def _dfl_decoders(graph: onnx.GraphProto) -> list[dict]:
    """Each ``Conv(Softmax(Transpose(x, [0,2,1,3]), axis=1), bins[1,R,1,1])`` read by a Reshape."""
    producers, consumers = _producers(graph), _consumers(graph)
    found = []
    for softmax in (n for n in graph.node if n.op_type == "Softmax" and _attr(n, "axis") == 1):
        transpose = producers.get(softmax.input[0])
        if transpose is None or transpose.op_type != "Transpose" or list(_attr(transpose, "perm", [])) != [0, 2, 1, 3]:
            continue
        readers = consumers.get(softmax.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Conv" or len(readers[0].input) != 2:
            continue
        conv = readers[0]
        bins = _constant(graph, conv.input[1], producers)
        after = consumers.get(conv.output[0], [])
        if bins is None or bins.ndim != 4 or bins.shape[0] != 1 or bins.shape[2:] != (1, 1) \
                or not after or any(n.op_type != "Reshape" or n.input[0] != conv.output[0] for n in after):
            continue
        found.append({"conv": conv, "logits": transpose.input[0], "bins": bins.reshape(-1).astype(np.float32)})
    return found


def _similarity(graph: onnx.GraphProto, p: str, text: np.ndarray, scale: np.ndarray,
                head: dict) -> tuple[list[onnx.NodeProto], bool]:
    """Nodes making ``p + "dot"`` (each cell's feature times the scaled class embeddings) and
    ``p + "norm"`` (the feature's L2 norm), and whether they read the projection's input instead
    of the features (module doc)."""
    proj = head["projection"]
    if proj is not None:
        classes = text[0].astype(np.float64) * float(scale)  # [K, C]
        w, b = proj["weight"], proj["bias"]  # [C, Cin], [C]
        rank = min(w.shape)
        # only where it saves work: K + rank outputs from Cin channels against C, then K from C
        if (classes.shape[0] + rank) * w.shape[1] < w.shape[0] * (w.shape[1] + classes.shape[0]):
            q, r = np.linalg.qr(w)  # w = q @ r, q [C, rank] orthonormal, r [rank, Cin]
            shift = q.T @ b
            rest = max(float(b @ b - shift @ shift), 0.0)  # |b|^2 outside the span of w
            graph.initializer.extend([
                numpy_helper.from_array((classes @ w).astype(np.float32)[:, :, None, None], p + "weight"),
                numpy_helper.from_array((classes @ b).astype(np.float32), p + "weight_bias"),
                numpy_helper.from_array(r.astype(np.float32)[:, :, None, None], p + "r"),
                numpy_helper.from_array(shift.astype(np.float32), p + "r_bias"),
                numpy_helper.from_array(np.array(rest, np.float32), p + "rest")])
            x = proj["input"]
            return [
                helper.make_node("Conv", [x, p + "weight", p + "weight_bias"], [p + "dot"], name=p + "Conv",
                                 kernel_shape=[1, 1]),
                helper.make_node("Conv", [x, p + "r", p + "r_bias"], [p + "rx"], name=p + "RConv", kernel_shape=[1, 1]),
                helper.make_node("ReduceSumSquare", [p + "rx"], [p + "rx_squared"], name=p + "ReduceSumSquare",
                                 axes=[1], keepdims=1),
                helper.make_node("Add", [p + "rx_squared", p + "rest"], [p + "squared"], name=p + "AddRest"),
                helper.make_node("Sqrt", [p + "squared"], [p + "norm"], name=p + "Sqrt")], True
    weight = (text[0] * scale).astype(np.float32)[:, :, None, None]
    graph.initializer.append(numpy_helper.from_array(weight, p + "weight"))
    x = head["features"]
    return [helper.make_node("Conv", [x, p + "weight"], [p + "dot"], name=p + "Conv", kernel_shape=[1, 1]),
            helper.make_node("ReduceL2", [x], [p + "norm"], name=p + "ReduceL2", axes=[1], keepdims=1)], False


def fuse_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its contrastive heads and DFL decoders in the cheaper form (module doc).
    The nodes they replace stay in the graph, unused, for the caller's prune."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    model = model_copy
    graph = model.graph
    heads, decoders = _contrastive_heads(graph), _dfl_decoders(graph)
    if not heads and not decoders:
        return model
    values = _constant_values(model, [n for h in heads for n in (h["text"], h["scale"])]) if heads else {}
    heads = [h for h in heads if h["text"] in values and h["scale"] in values]
    if not heads and not decoders:
        return model
    replaced: dict[str, list[onnx.NodeProto]] = {}  # output name -> the nodes now producing it
    folded = 0
    for i, head in enumerate(heads):
        p = f"vs_head{i}_"
        text = values[head["text"]]  # [1, K, C], unit rows
        graph.initializer.extend([numpy_helper.from_array(np.array(head["eps"], np.float32), p + "eps"),
                                  numpy_helper.from_array(np.array(head["bias"], np.float32), p + "bias")])
        similarity, projected = _similarity(graph, p, text, values[head["scale"]].reshape(()), head)
        folded += projected
        replaced[head["add"].output[0]] = [
            *similarity,
            helper.make_node("Clip", [p + "norm", p + "eps"], [p + "clipped"], name=p + "Clip"),
            helper.make_node("Div", [p + "dot", p + "clipped"], [p + "cosine"], name=p + "Div"),
            helper.make_node("Add", [p + "cosine", p + "bias"], [head["add"].output[0]], name=p + "Add")]
    for i, dfl in enumerate(decoders):
        p = f"vs_dfl{i}_"
        axes = p + "axes"
        graph.initializer.extend([numpy_helper.from_array(dfl["bins"][:, None], p + "bins"),
                                  numpy_helper.from_array(np.array([2], np.int64), axes)])
        x = dfl["logits"]  # [b, 4, R, anchors]
        replaced[dfl["conv"].output[0]] = [
            helper.make_node("ReduceMax", [x], [p + "max"], name=p + "ReduceMax", axes=[2], keepdims=1),
            helper.make_node("Sub", [x, p + "max"], [p + "shifted"], name=p + "Sub"),
            helper.make_node("Exp", [p + "shifted"], [p + "exp"], name=p + "Exp"),
            helper.make_node("Mul", [p + "exp", p + "bins"], [p + "weighted"], name=p + "Mul"),
            helper.make_node("ReduceSum", [p + "weighted", axes], [p + "num"], name=p + "ReduceSumNum", keepdims=1),
            helper.make_node("ReduceSum", [p + "exp", axes], [p + "den"], name=p + "ReduceSumDen", keepdims=1),
            # [b, 4, 1, anchors]: the convolution's [b, 1, 4, anchors] in the same order, and
            # only Reshapes read it
            helper.make_node("Div", [p + "num", p + "den"], [dfl["conv"].output[0]], name=p + "Div")]
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        new = replaced.get(node.output[0]) if len(node.output) == 1 else None
        nodes.extend(new if new is not None else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    # The replaced outputs' recorded shapes may no longer hold (the DFL's is [b, 4, 1, a] now).
    stale = set(replaced)
    kept = [vi for vi in graph.value_info if vi.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    log.info("detector head: %d contrastive heads as 1x1 convolutions (%d with their projection folded in), "
             "%d DFL decoders without transposes", len(heads), folded, len(decoders))
    return model

