"""Turn a raw ONNX model plus its raw manifest into the served model the ensemble expects.

Used for the built-in models and for anyone's own Ultralytics YOLO export or image
embedder: drop ``model.onnx`` + ``manifest.json`` in a folder and point ``make models`` at
it.  The embedder's normalisation, layout, colour order, flattening and L2 normalisation
are baked into the graph, so the Triton side never changes with the model.
"""

from __future__ import annotations

import ast
import copy
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tools.models import manifest as mf
from tools.models.detector_head import fuse_head

log = logging.getLogger(__name__)

# Served tensor names, the ones model_repository/{detector,embedder}/config.pbtxt declare.
DETECT_INPUT = "images"
DETECT_OUTPUT = "output0"
EMBED_INPUT = "pixels"
EMBED_OUTPUT = "embedding"
OPSET_FLOOR = 13
GEM_P = 3.0


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _find_io(graph: onnx.GraphProto, name: str, kind: str) -> onnx.ValueInfoProto:
    items = graph.input if kind == "input" else graph.output
    for vi in items:
        if vi.name == name:
            return vi
    names = [vi.name for vi in items]
    raise mf.ManifestError(f"ONNX graph has no {kind} named {name!r} (it has {names})")


def prepare_detector(raw: dict[str, Any], model: onnx.ModelProto,
                     fused_head: bool = True) -> tuple[onnx.ModelProto, dict]:
    """The served detector; ``fused_head``: its head's contrastive and DFL pieces in the
    cheaper form (tools/models/detector_head.py; False: as exported, for the benchmarks)."""
    if fused_head:
        model = prune(fuse_head(model))
    model = _rename_io(model, raw["input"]["name"], DETECT_INPUT, raw["output"]["name"], DETECT_OUTPUT)
    graph = model.graph
    inp = _find_io(graph, DETECT_INPUT, "input")
    out = _find_io(graph, DETECT_OUTPUT, "output")
    in_dims = _dims(inp)
    if len(in_dims) != 4 or in_dims[1] != 3 or not all(isinstance(d, int) and d > 0 for d in in_dims[2:]):
        raise mf.ManifestError(f"detector input must be [batch,3,H,W] with fixed H,W, got {in_dims}")
    if isinstance(in_dims[0], int) and in_dims[0] > 0:
        raise mf.ManifestError(
            "detector input has a fixed batch dimension; export it with a dynamic batch "
            "(Ultralytics: dynamic=True) so Triton can batch requests")
    classes = raw.get("classes") or _ultralytics_names(model)
    if not classes:
        raise mf.ManifestError("detector manifest has no 'classes' and the ONNX carries no 'names' metadata")
    height, width = in_dims[2], in_dims[3]
    if height != width:
        raise mf.ManifestError(f"detector input must be square for letterboxing, got {height}x{width}")
    # Triton needs concrete non-batch dims; run shape inference on a fixed size to learn N.
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    already_uint8 = inp.type.tensor_type.elem_type == TensorProto.UINT8  # e.g. a model served before
    probe_dtype = np.uint8 if already_uint8 else np.float32
    probe = session.run([out.name], {inp.name: np.zeros((1, 3, height, width), probe_dtype)})[0]
    if probe.ndim != 3 or probe.shape[1] != 4 + len(classes):
        raise mf.ManifestError(
            f"detector output {out.name} has shape {probe.shape}; expected [batch, 4+{len(classes)}, N] "
            "(Ultralytics YOLO layout without NMS)")
    out_dims = out.type.tensor_type.shape.dim
    out_dims[0].dim_param = "batch"
    out_dims[1].dim_value = probe.shape[1]
    out_dims[2].dim_value = probe.shape[2]
    # Serve uint8 pixels and scale to 0..1 inside the graph: 4x fewer bytes per image
    # between Triton's steps (and over PCIe on GPU).
    model = copy.deepcopy(model)
    graph = model.graph
    name = inp.name
    serving = {"input": {"name": name, "shape": [3, height, width], "dtype": "uint8"},
               "output": {"name": out.name, "shape": [int(probe.shape[1]), int(probe.shape[2])]}}
    if already_uint8:
        _find_io(graph, name, "input").type.tensor_type.shape.dim[0].dim_param = "batch"
        return model, {"classes": list(classes), "serving": serving}
    prefix = free_prefix(graph)
    rename_tensor(graph, name, prefix + "float_" + name)
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), prefix + "scale")
    graph.initializer.append(scale)
    nodes = [helper.make_node("Cast", [name], [prefix + "cast"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [prefix + "cast", prefix + "scale"], [prefix + "float_" + name]), *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    new_input = helper.make_tensor_value_info(name, TensorProto.UINT8, ["batch", 3, height, width])
    graph.input.remove(next(vi for vi in graph.input if vi.name == prefix + "float_" + name))
    graph.input.insert(0, new_input)
    return model, {"classes": list(classes), "serving": serving}


def _rename_io(model: onnx.ModelProto, raw_in: str, served_in: str, raw_out: str,
               served_out: str) -> onnx.ModelProto:
    """The graph with its input and output renamed to the served names (a no-op for the
    usual Ultralytics export, whose names they are)."""
    _find_io(model.graph, raw_in, "input")
    _find_io(model.graph, raw_out, "output")
    if (raw_in, raw_out) == (served_in, served_out):
        return model
    model = copy.deepcopy(model)
    taken = _tensor_names(model.graph) - {raw_in, raw_out}
    if {served_in, served_out} & taken:
        raise mf.ManifestError(f"the detector graph already uses {served_in!r} or {served_out!r} for an inner "
                               "tensor; rename it before serving")
    rename_tensor(model.graph, raw_in, served_in)
    rename_tensor(model.graph, raw_out, served_out)
    return model


def _drop_export_date(model: onnx.ModelProto) -> None:
    """Remove the export's timestamp (Ultralytics writes one into the metadata): the served
    file's sha256 names the catalog's collection and every stored image's content key, so two
    builds of the same weights with the same code must write the same bytes, or rebuilding the
    models image would send every catalog through an upgrade that changes nothing."""
    kept = [p for p in model.metadata_props if p.key != "date"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)


def _ultralytics_names(model: onnx.ModelProto) -> list[str]:
    meta = {p.key: p.value for p in model.metadata_props}
    if "names" not in meta:
        return []
    names = ast.literal_eval(meta["names"])
    return [names[i] for i in sorted(names)]


def prepare_embedder(raw: dict[str, Any], model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    spec = raw["input"]
    graph = model.graph
    raw_in = _find_io(graph, spec["name"], "input")
    layout = spec.get("layout", "NCHW")
    color = spec.get("color", "RGB")
    dims = _dims(raw_in)
    size = int(spec.get("size") or (dims[2] if layout == "NCHW" else dims[1]))
    # mean/std are given in the model's own channel order (after any RGB->BGR swap).
    mean = np.asarray(spec.get("mean", [0, 0, 0]), np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.get("std", [1, 1, 1]), np.float32).reshape(1, 3, 1, 1)
    feature = raw["output"]["name"]
    if not any(feature in node.output for node in graph.node) and feature not in {o.name for o in graph.output}:
        raise mf.ManifestError(f"embedder graph has no tensor named {feature!r}")

    model = copy.deepcopy(model)
    graph = model.graph
    prefix = free_prefix(graph)
    pooling = raw.get("pooling", "avg")
    if pooling == "gem":
        feature = _gem(graph, feature, prefix, float(raw.get("gem_p", GEM_P)))
    elif pooling != "avg":
        raise mf.ManifestError(f"embedder pooling must be 'avg' (the graph's own) or 'gem', got {pooling!r}")
    # The wrapper owns the names "pixels" and "embedding"; move the raw graph's aside.
    for taken in (EMBED_INPUT, EMBED_OUTPUT):
        if taken in _tensor_names(graph):
            rename_tensor(graph, taken, prefix + "raw_" + taken)
            feature = prefix + "raw_" + taken if feature == taken else feature
    raw_in = _find_io(graph, prefix + "raw_" + spec["name"] if spec["name"] in (EMBED_INPUT, EMBED_OUTPUT)
                      else spec["name"], "input")
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    nodes.append(helper.make_node("Cast", [EMBED_INPUT], [prefix + "float"], to=TensorProto.FLOAT))
    current = prefix + "float"
    if color == "BGR":
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), prefix + "bgr"))
        nodes.append(helper.make_node("Gather", [current, prefix + "bgr"], [prefix + "bgr_out"], axis=1))
        current = prefix + "bgr_out"
    inits += [numpy_helper.from_array(np.ascontiguousarray(mean), prefix + "mean"),
              numpy_helper.from_array(np.ascontiguousarray(std), prefix + "std")]
    nodes.append(helper.make_node("Sub", [current, prefix + "mean"], [prefix + "centered"]))
    nodes.append(helper.make_node("Div", [prefix + "centered", prefix + "std"], [prefix + "normed"]))
    current = prefix + "normed"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [current], [prefix + "nhwc"], perm=[0, 2, 3, 1]))
        current = prefix + "nhwc"
    if raw_in.type.tensor_type.elem_type != TensorProto.FLOAT:  # a graph that takes integers itself
        nodes.append(helper.make_node("Cast", [current], [raw_in.name], to=raw_in.type.tensor_type.elem_type))
    else:
        nodes.append(helper.make_node("Identity", [current], [raw_in.name]))

    tail = [
        helper.make_node("Flatten", [feature], [prefix + "flat"], axis=1),
        helper.make_node("ReduceL2", [prefix + "flat"], [prefix + "norm"], keepdims=1, axes=[1])
        if opset(model) < 18 else
        helper.make_node("ReduceL2", [prefix + "flat", prefix + "axes"], [prefix + "norm"], keepdims=1),
        helper.make_node("Max", [prefix + "norm", prefix + "eps"], [prefix + "safe"]),
        helper.make_node("Div", [prefix + "flat", prefix + "safe"], [EMBED_OUTPUT]),
    ]
    inits.append(numpy_helper.from_array(np.array([1e-12], np.float32), prefix + "eps"))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), prefix + "axes"))

    graph.input.remove(raw_in)
    graph.input.insert(0, helper.make_tensor_value_info(EMBED_INPUT, TensorProto.UINT8, ["batch", 3, size, size]))
    all_nodes = nodes + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(all_nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(EMBED_OUTPUT, TensorProto.FLOAT, ["batch", "dim"]))
    del graph.value_info[:]
    model = prune(model)

    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probe = session.run(None, {EMBED_INPUT: np.full((2, 3, size, size), 128, np.uint8)})[0]
    if probe.ndim != 2:
        raise mf.ManifestError(f"embedder feature {feature!r} flattens to shape {probe.shape}, expected [batch, dim]")
    graph.output[0].type.tensor_type.shape.dim[1].dim_value = probe.shape[1]
    serving = {"input": {"name": EMBED_INPUT, "shape": [3, size, size], "dtype": "uint8"},
               "output": {"name": EMBED_OUTPUT, "shape": [int(probe.shape[1])]}}
    return model, {"serving": serving, "pooling": pooling}


def _producer(graph: onnx.GraphProto, tensor: str) -> onnx.NodeProto | None:
    return next((node for node in graph.node if tensor in node.output), None)


def _gem(graph: onnx.GraphProto, feature: str, prefix: str, p: float) -> str:
    """Replace the global average pooling that produces ``feature`` by generalised-mean
    pooling, (mean over H,W of x^p)^(1/p), over the same convolutional map; returns the new
    feature tensor. p=3 is the usual choice for instance retrieval (Radenovic et al.)."""
    node = _producer(graph, feature)
    while node is not None and node.op_type in ("Flatten", "Reshape", "Squeeze", "Transpose", "Identity"):
        node = _producer(graph, node.input[0])
    if node is None or node.op_type not in ("GlobalAveragePool", "AveragePool", "ReduceMean"):
        raise mf.ManifestError(f"pooling 'gem' needs {feature!r} to come from a global average pooling "
                               "over a convolutional map; none was found")
    conv_map = node.input[0]  # NCHW: ONNX pooling operators work on channels-first maps
    graph.initializer.extend([numpy_helper.from_array(np.array(1e-6, np.float32), prefix + "gem_eps"),
                              numpy_helper.from_array(np.array(p, np.float32), prefix + "gem_p"),
                              numpy_helper.from_array(np.array(1 / p, np.float32), prefix + "gem_inv_p")])
    graph.node.extend([
        helper.make_node("Max", [conv_map, prefix + "gem_eps"], [prefix + "gem_clamped"]),
        helper.make_node("Pow", [prefix + "gem_clamped", prefix + "gem_p"], [prefix + "gem_pow"]),
        helper.make_node("GlobalAveragePool", [prefix + "gem_pow"], [prefix + "gem_mean"]),
        helper.make_node("Pow", [prefix + "gem_mean", prefix + "gem_inv_p"], [prefix + "gem"]),
    ])
    return prefix + "gem"


def _tensor_names(graph: onnx.GraphProto) -> set[str]:
    names = {vi.name for vi in [*graph.input, *graph.output]} | {i.name for i in graph.initializer}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def free_prefix(graph: onnx.GraphProto) -> str:
    names = _tensor_names(graph)
    n = 0
    while any(name.startswith(f"vs_wrap{n}_") for name in names):
        n += 1
    return f"vs_wrap{n}_"


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=OPSET_FLOOR)


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the nodes that no longer feed the outputs (e.g. the classifier head)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    kept_inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return model


def prepare(raw_dir: Path, out_dir: Path, fused_head: bool = True) -> dict[str, Any]:
    """Prepare ``raw_dir`` (raw model + manifest) into ``out_dir`` (served model + manifest);
    ``fused_head``: see ``prepare_detector``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    raw = mf.load(raw_dir, served=False)
    if not raw.get("rewrite", True):
        return _as_published(raw_dir, out_dir, raw)
    model = onnx.load(str(raw_dir / mf.MODEL_NAME))
    if raw["role"] == "detector":
        model, extra = prepare_detector(raw, model, fused_head)
    else:
        model, extra = prepare_embedder(raw, model)
    _drop_export_date(model)
    onnx.checker.check_model(model)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    onnx.save(model, str(tmp / mf.MODEL_NAME))
    served = {**raw, **{k: v for k, v in extra.items() if k != "serving"}}
    served["serving"] = {**extra["serving"], "onnx_sha256": mf.sha256_file(tmp / mf.MODEL_NAME)}
    mf.validate_served(served, str(out_dir))
    mf.save(tmp, served)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("prepared %s model %s into %s", raw["role"], raw["name"], out_dir)
    return served


def _as_published(raw_dir: Path, out_dir: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A model whose licence forbids changing the file (``"rewrite": false``): served byte for
    byte as published. Only an embedder that takes uint8 RGB pixels and returns unit vectors
    qualifies; the CPU embedder model feeds it in its own layout and tensor names
    (``serving.model_input`` / ``model_output``), so only the CPU configs can serve it."""
    if raw["role"] != "embedder":
        raise mf.ManifestError("only an embedder can be served without rewriting")
    spec = raw["input"]
    if spec.get("dtype") != "uint8" or spec.get("color", "RGB") != "RGB" or "size" not in spec:
        raise mf.ManifestError("a model served without rewriting must take uint8 RGB pixels of a given 'size'")
    import onnxruntime as ort

    size, layout = int(spec["size"]), spec.get("layout", "NCHW")
    session = ort.InferenceSession(str(raw_dir / mf.MODEL_NAME), providers=["CPUExecutionProvider"])
    shape = (2, size, size, 3) if layout == "NHWC" else (2, 3, size, size)
    probe = session.run([raw["output"]["name"]], {spec["name"]: np.full(shape, 128, np.uint8)})[0]
    norms = np.linalg.norm(probe, axis=1)
    if probe.ndim != 2 or not np.allclose(norms, 1, atol=1e-3):
        raise mf.ManifestError(f"{raw['name']} must return unit vectors [batch, dim]; got shape {probe.shape}")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(raw_dir / mf.MODEL_NAME, tmp / mf.MODEL_NAME)
    served = {**raw, "serving": {
        "input": {"name": EMBED_INPUT, "shape": [3, size, size], "dtype": "uint8"},
        "output": {"name": EMBED_OUTPUT, "shape": [int(probe.shape[1])]},
        "model_input": {"name": spec["name"], "layout": layout}, "model_output": {"name": raw["output"]["name"]},
        "onnx_sha256": mf.sha256_file(tmp / mf.MODEL_NAME)}}
    mf.validate_served(served, str(out_dir))
    mf.save(tmp, served)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("%s served as published (no rewriting)", raw["name"])
    return served
