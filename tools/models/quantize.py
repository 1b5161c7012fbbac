"""INT8 versions of the served models for CPU pods: onnxruntime static quantization (QDQ,
per-channel weights, activations calibrated on real photos), keeping in float what breaks
accuracy. Quantizing the whole YOLO graph zeroes its class scores, so its detection head (the
last Ultralytics module) and the graph's own top-level glue stay float; the embedder's
baked-in normalisation and L2 norm stay float too."""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from tools.models import calibration
from tools.models import manifest as mf
from tools.models.repository import INT8_NAME

log = logging.getLogger(__name__)

QDQ_OPSET = 13  # DequantizeLinear's per-channel axis needs opset 13
MODULE = re.compile(r"^/model\.(\d+)/")


class _Batches(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._items = iter([{name: b} for b in batches])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def float_nodes(role: str, model: onnx.ModelProto) -> list[str]:
    """Nodes that stay float."""
    names = [n.name for n in model.graph.node]
    if role == "detector":
        indices = [int(m.group(1)) for n in names if (m := MODULE.match(n))]
        if not indices:
            raise mf.ManifestError("the detector graph has no Ultralytics /model.N/ nodes: cannot find its head")
        head = f"/model.{max(indices)}/"
        return [n for n in names if n.startswith(head) or not MODULE.match(n)]
    return [n.name for n in model.graph.node if n.name.startswith("vs_wrap")
            or any(o.startswith("vs_wrap") for o in n.output)]


def quantize(served: Path, photos: list[Path]) -> dict:
    """Write ``served/model.int8.onnx`` and return the manifest's ``serving.int8`` entry."""
    manifest = mf.load(served)
    role, serving = manifest["role"], manifest["serving"]
    size = serving["input"]["shape"][1]
    batches = (calibration.detector_inputs(photos, size) if role == "detector"
               else calibration.embedder_inputs(photos, size))
    model = onnx.load(str(served / mf.MODEL_NAME))
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    with tempfile.TemporaryDirectory(prefix="vs-quantize-") as tmp:
        source = Path(tmp) / "float.onnx"
        if opset < QDQ_OPSET:
            model = version_converter.convert_version(model, QDQ_OPSET)
        onnx.save(model, str(source))
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        keep = float_nodes(role, onnx.load(str(prepared)))
        quantize_static(str(prepared), str(served / INT8_NAME), _Batches(serving["input"]["name"], batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    log.info("quantized %s to INT8 (%d nodes kept float, %d calibration inputs)", manifest["name"], len(keep),
             len(batches))
    return {"file": INT8_NAME, "onnx_sha256": mf.sha256_file(served / INT8_NAME),
            "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations (MinMax)",
            "float_nodes": len(keep), "calibration": {"source": calibration.LICENSE, "photos": len(photos),
                                                      "inputs": len(batches)}}
