"""Render the Triton model repositories (``gpu`` canonical, ``cpu`` local/CI) from manifests.

Both variants share model names, tensor names, shapes and types; only the backend of the
two ONNX models differs (``onnxruntime`` + TensorRT on GPU, a Python model running
onnxruntime on CPU). Configs are built as ``ModelConfig`` protos, so a typo is an error
here rather than at server start.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.models import manifest as mf
from services.paths import ROOT

log = logging.getLogger(__name__)

PYTHON_SOURCES = ROOT / "model_repository" / "python"
SHARED_MODULE = "vs_imaging.py"

DETECT_ENSEMBLE = "detect_and_embed"
REGION_ENSEMBLE = "embed_region"
VARIANTS = ("cpu", "gpu")
TRT_ENGINE_CACHE = "/trt-cache"

F32, U8, STR, BOOL = mc.TYPE_FP32, mc.TYPE_UINT8, mc.TYPE_STRING, mc.TYPE_BOOL


@dataclass(frozen=True)
class PipelineSettings:
    """Knobs of the pipeline that are baked into the rendered configs."""

    max_objects: int = 16
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_pixels: int = 50_000_000
    work_side: int = 1344
    detector_max_batch: int = 8
    embedder_max_batch: int = 32
    preprocess_max_batch: int = 8
    queue_delay_us: int = 2000
    cpu_intra_op_threads: int = 0  # 0 = onnxruntime's default (all cores)
    # Spinning intra-op threads steal the cores the Python pre/post stubs need: measured with
    # `make bench` on 2 cores, turning it off cut the ensemble's p50 at concurrency 1 by ~25 ms.
    cpu_allow_spinning: bool = False
    cpu_onnx_instances: int = 1  # instances of detector/embedder in the CPU variant
    python_instances: int = 1


def _io(name: str, dtype: int, dims: list[int]) -> dict[str, Any]:
    return {"name": name, "data_type": dtype, "dims": dims}


def _config(name: str, max_batch: int, inputs: list[dict], outputs: list[dict], **kw: Any) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=name, max_batch_size=max_batch)
    for spec in inputs:
        cfg.input.append(mc.ModelInput(**spec))
    for spec in outputs:
        cfg.output.append(mc.ModelOutput(**spec))
    for key, value in kw.pop("parameters", {}).items():
        cfg.parameters[key].string_value = str(value)
    for key, value in kw.items():
        setattr(cfg, key, value) if not isinstance(value, list) else getattr(cfg, key).extend(value)
    return cfg


def _python_model(cfg: mc.ModelConfig, settings: PipelineSettings, kind: int) -> mc.ModelConfig:
    cfg.backend = "python"
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=kind, count=settings.python_instances))
    return cfg


def _batching(cfg: mc.ModelConfig, settings: PipelineSettings) -> mc.ModelConfig:
    cfg.dynamic_batching.max_queue_delay_microseconds = settings.queue_delay_us
    return cfg


def _onnx_model(cfg: mc.ModelConfig, variant: str, settings: PipelineSettings, manifest: dict) -> mc.ModelConfig:
    cfg.parameters["model_name"].string_value = manifest["name"]
    cfg.parameters["onnx_sha256"].string_value = manifest["serving"]["onnx_sha256"]
    if variant == "cpu":
        cfg.parameters["intra_op_threads"].string_value = str(settings.cpu_intra_op_threads)
        cfg.parameters["allow_spinning"].string_value = "1" if settings.cpu_allow_spinning else "0"
        cfg.backend = "python"
        cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU,
                                                        count=settings.cpu_onnx_instances))
        return cfg
    cfg.platform = "onnxruntime_onnx"
    cfg.instance_group.append(mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=1))
    trt = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    trt.parameters["precision_mode"] = "FP16"
    trt.parameters["max_workspace_size_bytes"] = str(2 << 30)
    trt.parameters["trt_engine_cache_enable"] = "true"
    trt.parameters["trt_engine_cache_path"] = f"{TRT_ENGINE_CACHE}/{cfg.name}"
    warm = cfg.model_warmup.add(name="warmup", batch_size=1)
    for tensor in cfg.input:
        warm.inputs[tensor.name].data_type = tensor.data_type
        warm.inputs[tensor.name].dims.extend(tensor.dims)
        warm.inputs[tensor.name].random_data = True
    return cfg


def render_configs(variant: str, detector: dict, embedder: dict,
                   settings: PipelineSettings) -> dict[str, mc.ModelConfig]:
    """All model configs of one variant, keyed by model name."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    det_in, det_out = detector["serving"]["input"], detector["serving"]["output"]
    emb_in, emb_out = embedder["serving"]["input"], embedder["serving"]["output"]
    size, crop = det_in["shape"][1], emb_in["shape"][1]
    dim = emb_out["shape"][0]
    py_kind = mc.ModelInstanceGroup.KIND_CPU
    if settings.work_side < size:
        raise ValueError(f"work_side {settings.work_side} must be >= the detector input size {size}")
    if settings.embedder_max_batch < settings.max_objects:
        raise ValueError("embedder_max_batch must be >= max_objects (every crop of one image is one batch)")

    configs = {
        "preprocess": _batching(_python_model(_config(
            "preprocess", settings.preprocess_max_batch,
            [_io("IMAGE", STR, [1])],
            [_io("DETECTOR_INPUT", U8, [3, size, size]), _io("WORK_IMAGE", U8, [-1, -1, 3]),
             _io("GEOMETRY", F32, [7])],
            parameters={"detector_size": size, "max_pixels": settings.max_pixels,
                        "work_side": settings.work_side}), settings, py_kind), settings),
        "detector": _batching(_onnx_model(_config(
            "detector", settings.detector_max_batch,
            [_io(det_in["name"], U8, det_in["shape"])], [_io(det_out["name"], F32, det_out["shape"])]),
            variant, settings, detector), settings),
        "postprocess": _python_model(_config(
            "postprocess", 0,
            [_io("DETECTIONS", F32, [1, *det_out["shape"]]), _io("WORK_IMAGE", U8, [1, -1, -1, 3]),
             _io("GEOMETRY", F32, [1, 7])],
            [_io("BOXES", F32, [-1, 4]), _io("SCORES", F32, [-1]), _io("LABELS", STR, [-1]),
             _io("CROPS", U8, [-1, 3, crop, crop]), _io("FALLBACK", BOOL, [1])],
            parameters={"classes": json.dumps(detector["classes"]), "score_threshold": settings.score_threshold,
                        "iou_threshold": settings.iou_threshold, "max_objects": settings.max_objects,
                        "crop_size": crop}), settings, py_kind),
        "embedder": _batching(_onnx_model(_config(
            "embedder", settings.embedder_max_batch,
            [_io(emb_in["name"], U8, emb_in["shape"])], [_io(emb_out["name"], F32, [dim])]),
            variant, settings, embedder), settings),
        "region_crop": _python_model(_config(
            "region_crop", 0,
            [_io("IMAGE", STR, [1]), _io("REGION", F32, [4])],
            [_io("CROPS", U8, [1, 3, crop, crop]), _io("BOXES", F32, [1, 4])],
            parameters={"max_pixels": settings.max_pixels, "work_side": settings.work_side,
                        "crop_size": crop}), settings, py_kind),
    }
    configs[DETECT_ENSEMBLE] = _ensemble(
        DETECT_ENSEMBLE,
        [_io("IMAGE", STR, [1, 1])],
        [_io("BOXES", F32, [-1, 4]), _io("SCORES", F32, [-1]), _io("LABELS", STR, [-1]),
         _io("EMBEDDINGS", F32, [-1, dim]), _io("FALLBACK", BOOL, [1])],
        [("preprocess", {"IMAGE": "IMAGE"},
          {"DETECTOR_INPUT": "detector_input", "WORK_IMAGE": "work_image", "GEOMETRY": "geometry"}),
         ("detector", {det_in["name"]: "detector_input"}, {det_out["name"]: "detections"}),
         ("postprocess", {"DETECTIONS": "detections", "WORK_IMAGE": "work_image", "GEOMETRY": "geometry"},
          {"BOXES": "BOXES", "SCORES": "SCORES", "LABELS": "LABELS", "CROPS": "crops", "FALLBACK": "FALLBACK"}),
         ("embedder", {emb_in["name"]: "crops"}, {emb_out["name"]: "EMBEDDINGS"})])
    configs[REGION_ENSEMBLE] = _ensemble(
        REGION_ENSEMBLE,
        [_io("IMAGE", STR, [1]), _io("REGION", F32, [4])],
        [_io("EMBEDDINGS", F32, [1, dim]), _io("BOXES", F32, [1, 4])],
        [("region_crop", {"IMAGE": "IMAGE", "REGION": "REGION"}, {"CROPS": "crops", "BOXES": "BOXES"}),
         ("embedder", {emb_in["name"]: "crops"}, {emb_out["name"]: "EMBEDDINGS"})])
    return configs


def _ensemble(name: str, inputs: list[dict], outputs: list[dict],
              steps: list[tuple[str, dict[str, str], dict[str, str]]]) -> mc.ModelConfig:
    cfg = _config(name, 0, inputs, outputs, platform="ensemble")
    for model, input_map, output_map in steps:
        step = cfg.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return cfg


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def build(models_dir: Path, out_dir: Path, settings: PipelineSettings | None = None) -> None:
    """Write ``out_dir/{cpu,gpu}`` from the served models in ``models_dir/{detector,embedder}``."""
    settings = settings or PipelineSettings()
    detector = mf.load(models_dir / "detector")
    embedder = mf.load(models_dir / "embedder")
    if detector["role"] != "detector" or embedder["role"] != "embedder":
        raise mf.ManifestError("models_dir/detector must hold a detector and models_dir/embedder an embedder")
    for variant in VARIANTS:
        root = out_dir / variant
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for name, cfg in render_configs(variant, detector, embedder, settings).items():
            model_dir = tmp / name
            version = model_dir / "1"
            version.mkdir(parents=True)
            (model_dir / "config.pbtxt").write_text(text_format.MessageToString(cfg))
            if name in ("detector", "embedder"):
                _copy(models_dir / name / mf.MODEL_NAME, version / mf.MODEL_NAME)
                _copy(models_dir / name / mf.MANIFEST_NAME, model_dir / mf.MANIFEST_NAME)
                if variant == "cpu":
                    _copy(PYTHON_SOURCES / "onnx_runner.py", version / "model.py")
            elif cfg.backend == "python":
                _copy(PYTHON_SOURCES / f"{name}.py", version / "model.py")
                _copy(PYTHON_SOURCES / SHARED_MODULE, version / SHARED_MODULE)
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        log.info("rendered %s model repository at %s", variant, root)


def load_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())
