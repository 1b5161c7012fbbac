"""The crops model's GPU graph: every object's crop and the whole image's views, as ONNX.

What ``imaging.crops_of`` does with Pillow (the CPU config), as one graph that ONNX Runtime
runs with its CUDA provider in the GPU config, so a GPU pod's CPUs do not crop and resize in
Python. On CPU, Pillow is the faster of the two (``python -m tools.bench.crops``), so the CPU
config keeps it.

* the boxes: one batched ``RoiAlign`` for those larger than the output (each output pixel
  the mean of the box's pixels under it: Pillow's antialiased shrinking, approximately), one
  ``GridSample`` for the others (bilinear, the samples kept inside the box, as Pillow's);
* the plain view: ``Resize`` with ``antialias`` (the filter Pillow's bilinear resize uses);
* the views turned 15 degrees each way: one ``GridSample`` of a copy at the output side, the
  uncovered corners filled with the border's median colour (``TopK``) as ``views.turned``;
* the low-resolution view: an antialiased ``Resize`` down, then up.

``make models`` writes it for the installed embedder's input side; it has no weights.
Inputs: ``image`` (1xHxWx3 uint8, the working picture), ``boxes`` (Kx4 float32, x1, y1, x2,
y2 in its whole pixels, as ``imaging.crop_windows``) and ``views`` (1 int64, 1..4); output
``crops`` ((K + views)x3xSxS uint8)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from services.triton_models import views

# The tensor names: model_repository/crops/config.pbtxt serves the graph under them.
IMAGE, BOXES, VIEWS, CROPS = "image", "boxes", "views", "crops"
OPSET = 18  # Resize's antialias (18); the CUDA provider of Triton 24.10's ONNX Runtime (1.19) has kernels up to it
# RoiAlign samples per output pixel and axis; 0: as many as the box has pixels per output pixel
BOX_SAMPLES = 0


class _Graph:
    """Nodes and constants in the order they are added, with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: object, dtype: type = np.float32) -> str:
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, unused_outputs: int = 0,
           **attrs: object) -> str:
        """The node's first output; ``unused_outputs`` more are named and left unread."""
        name = out or self._name(op_type.lower())
        extra = [self._name(f"{op_type.lower()}_unused") for _ in range(unused_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), [name, *extra], **attrs))
        return name


def _resize(g: _Graph, x: str, sizes: str, antialias: int = 1) -> str:
    """Pillow-style bilinear resize (pixel centres at half-integers) to ``sizes`` (NCHW)."""
    return g.op("Resize", x, "", "", sizes, mode="linear", antialias=antialias,
                coordinate_transformation_mode="half_pixel")


def _long_side_sizes(g: _Graph, hw: str, side: float) -> str:
    """NCHW sizes [1, 3, h', w'] with the long side at most ``side`` (Pillow's thumbnail rounding)."""
    scale = g.op("Min", g.const([1.0]), g.op("Div", g.const([side]), g.op("ReduceMax", hw, keepdims=1)))
    new = g.op("Max", g.const([1.0, 1.0]), g.op("Round", g.op("Mul", hw, scale)))
    return g.op("Concat", g.const([1, 3], np.int64), g.op("Cast", new, to=TensorProto.INT64), axis=0)


def _border_median(g: _Graph, x: str, hw_int: str) -> str:
    """[1,3,1,1]: each channel's median over the outermost pixels of an NCHW image
    (numpy's median: the mean of the two middle values; the count, 2h + 2w, is even)."""
    rows = g.op("Gather", x, g.const([0, -1], np.int64), axis=2)  # [1,3,2,W]
    cols = g.op("Gather", x, g.const([0, -1], np.int64), axis=3)  # [1,3,H,2]
    flat = g.const([1, 3, -1], np.int64)
    border = g.op("Concat", g.op("Reshape", rows, flat), g.op("Reshape", cols, flat), axis=2)
    half = g.op("Add", g.op("ReduceSum", hw_int, keepdims=1), g.const([1], np.int64))  # h + w + 1 = n/2 + 1
    top = g.op("TopK", border, half, axis=2, largest=1, unused_outputs=1)  # the values, not the indices
    middle = g.op("Slice", top, g.const([-2], np.int64), g.const([2**62], np.int64), g.const([2], np.int64))
    return g.op("Unsqueeze", g.op("ReduceMean", middle, g.const([2], np.int64), keepdims=1),
                g.const([3], np.int64))


def _turned_views(g: _Graph, source: str, hw: str, fill: str, side: int) -> str:
    """[2,3,S,S]: the image turned +15 and -15 degrees on a canvas grown to hold it, resized
    to S x S, in one bilinear sampling (views.turned)."""
    frac = (np.arange(side, dtype=np.float32) + 0.5) / side - 0.5
    gx = frac.reshape(1, 1, side)  # [1, 1, S]
    gy = frac.reshape(1, side, 1)  # [1, S, 1]
    h = g.op("Gather", hw, g.const(0, np.int64))
    w = g.op("Gather", hw, g.const(1, np.int64))
    grids, insides = [], []
    for degrees in (views.TURN_DEGREES, -views.TURN_DEGREES):
        rad = math.radians(degrees)
        cos, sin = math.cos(rad), math.sin(rad)
        canvas_w = g.op("Add", g.op("Mul", w, g.const(abs(cos))), g.op("Mul", h, g.const(abs(sin))))
        canvas_h = g.op("Add", g.op("Mul", w, g.const(abs(sin))), g.op("Mul", h, g.const(abs(cos))))
        # Offsets (dx, dy) from the canvas' centre, turned back onto the image around its
        # centre: x = cos * dx - sin * dy, y = sin * dx + cos * dy; GridSample wants them
        # as -1..1 across the image: 2x / w, 2y / h.
        dx, dy = g.op("Mul", g.const(gx), canvas_w), g.op("Mul", g.const(gy), canvas_h)
        nx = g.op("Div", g.op("Mul", g.const(2.0), g.op("Sub", g.op("Mul", dx, g.const(cos)),
                                                           g.op("Mul", dy, g.const(sin)))), w)
        ny = g.op("Div", g.op("Mul", g.const(2.0), g.op("Add", g.op("Mul", dx, g.const(sin)),
                                                           g.op("Mul", dy, g.const(cos)))), h)
        grids.append(g.op("Concat", g.op("Unsqueeze", nx, g.const([3], np.int64)),
                          g.op("Unsqueeze", ny, g.const([3], np.int64)), axis=3))  # [1, S, S, 2]
        limit = g.const(1.0)
        insides.append(g.op("And", g.op("LessOrEqual", g.op("Abs", nx), limit),
                            g.op("LessOrEqual", g.op("Abs", ny), limit)))  # [1, S, S]
    grid = g.op("Concat", *grids, axis=0)
    inside = g.op("Unsqueeze", g.op("Concat", *insides, axis=0), g.const([1], np.int64))  # [2,1,S,S]
    both = g.op("Concat", source, source, axis=0)
    turned = g.op("GridSample", both, grid, mode="bilinear", padding_mode="border", align_corners=0)
    return g.op("Where", inside, turned, fill)


def _box_crops(g: _Graph, x: str, boxes: str, hw: str, side: int) -> str:
    """[K,3,S,S]: each box's crop. A box larger than S on a side is shrunk by RoiAlign (each
    output pixel the mean of the box's pixels under it, as Pillow's antialiased shrinking); one
    no larger is enlarged by GridSample with its samples kept inside the box, as Pillow's
    bilinear enlarging repeats a crop's edge pixels (RoiAlign would blend in the pixels just
    outside, which changes a 10 px box's embedding noticeably)."""
    count = g.op("Slice", g.op("Shape", boxes), g.const([0], np.int64), g.const([1], np.int64))
    batch_index = g.op("ConstantOfShape", count, value=numpy_helper.from_array(np.zeros(1, np.int64)))
    shrunk = g.op("RoiAlign", x, boxes, batch_index, output_height=side, output_width=side,
                  sampling_ratio=BOX_SAMPLES, mode="avg", spatial_scale=1.0,
                  coordinate_transformation_mode="half_pixel")
    frac = ((np.arange(side, dtype=np.float32) + 0.5) / side)
    axes = []
    for first, last, size_index, shape in ((0, 2, 1, (1, 1, side)), (1, 3, 0, (1, side, 1))):
        start = g.op("Unsqueeze", g.op("Gather", boxes, g.const([first], np.int64), axis=1), g.const([2], np.int64))
        end = g.op("Unsqueeze", g.op("Gather", boxes, g.const([last], np.int64), axis=1), g.const([2], np.int64))
        # pixel-centre coordinates of the samples ([K,1,1] boxes), kept on the box's pixels
        centre = g.op("Sub", g.op("Add", start, g.op("Mul", g.op("Sub", end, start), g.const(frac.reshape(shape)))),
                      g.const(0.5))
        centre = g.op("Min", g.op("Max", centre, start), g.op("Sub", end, g.const(1.0)))
        extent = g.op("Gather", hw, g.const(size_index, np.int64))
        axes.append(g.op("Sub", g.op("Div", g.op("Mul", g.op("Add", centre, g.const(0.5)), g.const(2.0)), extent),
                         g.const(1.0)))  # GridSample's -1..1 (align_corners 0)
    zeros = g.op("Mul", g.op("Add", axes[0], axes[1]), g.const(0.0))  # [K,S,S], to broadcast both
    grid = g.op("Concat", g.op("Unsqueeze", g.op("Add", axes[0], zeros), g.const([3], np.int64)),
                g.op("Unsqueeze", g.op("Add", axes[1], zeros), g.const([3], np.int64)), axis=3)  # [K,S,S,2]
    # all boxes' sample grids stacked as one tall grid: one GridSample over the one picture
    tall = g.op("Reshape", grid, g.const([1, -1, side, 2], np.int64))
    enlarged = g.op("GridSample", x, tall, mode="bilinear", padding_mode="border", align_corners=0)
    enlarged = g.op("Transpose", g.op("Reshape", enlarged, g.const([3, -1, side, side], np.int64)), perm=[1, 0, 2, 3])
    sides = g.op("Sub", g.op("Slice", boxes, g.const([2], np.int64), g.const([4], np.int64), g.const([1], np.int64)),
                 g.op("Slice", boxes, g.const([0], np.int64), g.const([2], np.int64), g.const([1], np.int64)))
    small = g.op("LessOrEqual", g.op("ReduceMax", sides, g.const([1], np.int64), keepdims=1), g.const(float(side)))
    small = g.op("Reshape", small, g.const([-1, 1, 1, 1], np.int64))
    return g.op("Where", small, enlarged, shrunk)


def _hw(g: _Graph, x: str) -> tuple[str, str]:
    """An NCHW tensor's [h, w], as int64 and as float."""
    hw_int = g.op("Slice", g.op("Shape", x), g.const([2], np.int64), g.const([4], np.int64))
    return hw_int, g.op("Cast", hw_int, to=TensorProto.FLOAT)


def build(side: int) -> onnx.ModelProto:
    """The graph for crops of ``side`` px; its ``views`` input takes 1..views.MAX_VIEWS."""
    g = _Graph()
    x = g.op("Cast", g.op("Transpose", IMAGE, perm=[0, 3, 1, 2]), to=TensorProto.FLOAT)  # [1,3,H,W]
    _, hw = _hw(g, x)
    # One more box than asked (a 1 px one, dropped at the end), so that no operator sees a
    # zero-size tensor on a photo without objects: the CUDA kernels are not exercised here.
    count = g.op("Slice", g.op("Shape", BOXES), g.const([0], np.int64), g.const([1], np.int64))
    padded = g.op("Concat", BOXES, g.const([[0.0, 0.0, 1.0, 1.0]]), axis=0)
    boxes = _box_crops(g, x, padded, hw, side)
    square = g.const([1, 3, side, side], np.int64)
    plain = _resize(g, x, square)
    # The other views come from a copy at twice the input side, as in views.whole_image_views
    work = _resize(g, x, _long_side_sizes(g, hw, 2 * side))
    work_hw_int, work_hw = _hw(g, work)
    fill = g.op("Floor", _border_median(g, work, work_hw_int))  # Pillow truncates the fill colour
    source = _resize(g, work, _long_side_sizes(g, work_hw, side))
    _, source_hw = _hw(g, source)
    turned = _turned_views(g, source, source_hw, fill, side)
    low = _resize(g, work, _long_side_sizes(g, work_hw, max(8, round(side * views.LOW_RESOLUTION))))
    low = _resize(g, low, square, antialias=0)
    whole = g.op("Slice", g.op("Concat", plain, turned, low, axis=0), g.const([0], np.int64), VIEWS,
                 g.const([0], np.int64))
    scalar = g.const([0], np.int64)
    rows = g.op("Range", g.const(0, np.int64), g.op("Squeeze", g.op("Add", count, VIEWS), scalar), g.const(1, np.int64))
    after_pad = g.op("GreaterOrEqual", rows, g.op("Squeeze", count, scalar))
    skip_pad = g.op("Add", rows, g.op("Cast", after_pad, to=TensorProto.INT64))
    stacked = g.op("Gather", g.op("Concat", boxes, whole, axis=0), skip_pad, axis=0)
    g.op("Cast", g.op("Clip", g.op("Round", stacked), g.const(0.0), g.const(255.0)), to=TensorProto.UINT8,
         out=CROPS)
    graph = helper.make_graph(
        g.nodes, "crops",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, [1, "height", "width", 3]),
         helper.make_tensor_value_info(BOXES, TensorProto.FLOAT, ["boxes", 4]),
         helper.make_tensor_value_info(VIEWS, TensorProto.INT64, [1])],
        # the side is the embedder's; the config (in git) leaves it open, as the embedder's does
        [helper.make_tensor_value_info(CROPS, TensorProto.UINT8, ["crops", 3, "side", "side"])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="visualsearch-crop-graph")
    model.ir_version = 8  # readable by ONNX Runtime 1.19 (Triton 24.10's ONNX Runtime backend)
    onnx.checker.check_model(model, full_check=True)
    return model


def write(path: Path, side: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build(side), path)
    return path


class CropGraph:
    """The graph run in this process with ONNX Runtime on CPU (tests and benchmarks)."""

    def __init__(self, model: onnx.ModelProto | Path, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def crops(self, pixels: np.ndarray, crop_boxes: np.ndarray, view_count: int) -> np.ndarray:
        """As ``imaging.crops_of``: the crop of each whole-pixel box of the HxWx3 picture, then
        its first ``view_count`` whole-image views."""
        return self.session.run([CROPS], {IMAGE: np.ascontiguousarray(pixels)[None],
                                          BOXES: np.asarray(crop_boxes, np.float32).reshape(-1, 4),
                                          VIEWS: np.array([view_count], np.int64)})[0]
