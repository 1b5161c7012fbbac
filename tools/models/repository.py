"""The Triton model repository in ``model_repository/``: read its configs, install the served
models into it, and copy it with other CPU settings for benchmarks.

The repository itself (every ``config.pbtxt``, ``configs/cpu.pbtxt`` and ``1/model.py``) is
in git. ``make models`` only adds ``detector/`` and ``embedder/``'s ``1/model.onnx`` and
``manifest.json``, and ``crops/1/model.onnx`` (the GPU config's crop graph, built for the
embedder's input side); the Python models read what depends on the plugged-in model (input
sizes, class names) from those manifests.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from services.paths import ROOT
from services.triton_models.imaging import DetectionSettings
from tools.models import crop_graph
from tools.models import manifest as mf

log = logging.getLogger(__name__)

REPOSITORY = ROOT / "model_repository"
CPU_CONFIG = "cpu"  # --model-config-name of the CPU variant (configs/cpu.pbtxt where a model has one)
VARIANTS = ("gpu", CPU_CONFIG)
ONNX_MODELS = ("detector", "embedder")
CROPS = "crops"  # its GPU config serves the crop graph `make models` writes; its CPU config, Pillow
INT8_NAME = "model.int8.onnx"  # tools.models.quantize writes it; only the CPU configs serve it


def load_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def configs(variant: str, repository: Path = REPOSITORY) -> dict[str, mc.ModelConfig]:
    """Every model's config as Triton loads it for ``variant`` (gpu = config.pbtxt)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    out = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        custom = path.parent / "configs" / f"{variant}.pbtxt"
        out[path.parent.name] = load_config(custom if variant != "gpu" and custom.is_file() else path)
    return out


def parameter(cfg: mc.ModelConfig, key: str) -> str:
    return cfg.parameters[key].string_value


@dataclass(frozen=True)
class PipelineSettings:
    """The image-pipeline knobs of the repository's configs (what the in-process reference
    must use to compute what Triton computes)."""

    detection: DetectionSettings
    max_pixels: int
    work_side: int

    @classmethod
    def from_repository(cls, repository: Path = REPOSITORY) -> PipelineSettings:
        cfg = configs(CPU_CONFIG, repository)
        pre, post = cfg["preprocess"], cfg["postprocess"]
        detection = DetectionSettings.from_parameters({k: v.string_value for k, v in post.parameters.items()})
        return cls(detection, int(parameter(pre, "max_pixels")), int(parameter(pre, "work_side")))


def install(role: str, served: Path, repository: Path = REPOSITORY) -> None:
    """Put a served model (``model.onnx`` + ``manifest.json``) into its model folder, after
    checking that its tensors are the ones the config declares."""
    manifest = mf.load(served)
    if manifest["role"] != role:
        raise mf.ManifestError(f"{served} holds a {manifest['role']}, not a {role}")
    cfg = load_config(Path(repository) / role / "config.pbtxt")
    serving = manifest["serving"]
    expected = (cfg.input[0].name, cfg.output[0].name)
    if (serving["input"]["name"], serving["output"]["name"]) != expected:
        raise mf.ManifestError(f"{served}: served tensors {serving['input']['name']!r} -> "
                               f"{serving['output']['name']!r} differ from {role}/config.pbtxt's {expected}")
    if "model_input" in serving:
        log.warning("%s is served as published (its own tensor names and layout): only the CPU configs "
                    "(--model-config-name=cpu) can serve it; the GPU config's ONNX Runtime backend cannot",
                    manifest["name"])
    folder = Path(repository) / role
    _replace(served / mf.MODEL_NAME, folder / "1" / mf.MODEL_NAME)
    int8 = folder / "1" / INT8_NAME  # what the CPU configs serve when it exists
    if (served / INT8_NAME).is_file():
        _replace(served / INT8_NAME, int8)
    else:
        int8.unlink(missing_ok=True)
    _replace(served / mf.MANIFEST_NAME, folder / mf.MANIFEST_NAME)


def install_crop_graph(repository: Path = REPOSITORY) -> Path:
    """Write the crops model's graph for the installed embedder's input side."""
    side = mf.load_file(Path(repository) / "embedder" / mf.MANIFEST_NAME)["serving"]["input"]["shape"][1]
    dst = Path(repository) / CROPS / "1" / mf.MODEL_NAME
    tmp = crop_graph.write(dst.with_name(f".{dst.name}.tmp"), side)
    tmp.replace(dst)
    return dst


def installed(role: str, repository: Path = REPOSITORY, variant: str = "gpu") -> tuple[Path, dict]:
    """The ONNX file Triton serves for ``role`` in ``variant`` (the CPU configs serve the INT8
    file when there is one and their ``prefer_int8`` is 1) and the model's manifest."""
    folder = Path(repository) / role
    int8 = folder / "1" / INT8_NAME
    prefers = parameter(configs(CPU_CONFIG, repository)[role], "prefer_int8") == "1"
    onnx_file = int8 if variant == CPU_CONFIG and prefers and int8.is_file() else folder / "1" / mf.MODEL_NAME
    return onnx_file, mf.load_file(folder / mf.MANIFEST_NAME)


def _replace(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)  # a rename: a server reading the old file keeps its inode


def _linked_copy(dst: Path, repository: Path) -> None:
    """Copy the repository with its ONNX files linked, not copied."""
    shutil.copytree(repository, dst, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    for role in ONNX_MODELS:
        for name in (mf.MODEL_NAME, INT8_NAME):
            if (Path(repository) / role / "1" / name).is_file():
                (dst / role / "1" / name).symlink_to((Path(repository) / role / "1" / name).resolve())


def _save_cpu_config(dst: Path, name: str, cfg: mc.ModelConfig) -> None:
    custom = dst / name / "configs" / f"{CPU_CONFIG}.pbtxt"
    target = custom if custom.is_file() else dst / name / "config.pbtxt"
    target.write_text(text_format.MessageToString(cfg))


def copy_with_cpu_settings(dst: Path, onnx_instances: int | None = None, intra_op_threads: int | None = None,
                           python_instances: int | None = None, repository: Path = REPOSITORY) -> Path:
    """A copy of the repository whose CPU configs use other instance counts or onnxruntime
    threads: how the benchmark compares CPU settings."""
    _linked_copy(dst, repository)
    for name, cfg in configs(CPU_CONFIG, dst).items():
        if cfg.backend != "python":
            continue
        if name in ONNX_MODELS:
            count = onnx_instances
            if intra_op_threads is not None:
                cfg.parameters["intra_op_threads"].string_value = str(intra_op_threads)
        else:
            count = python_instances
        if count is not None:
            cfg.instance_group[0].count = count
        _save_cpu_config(dst, name, cfg)
    return dst


def copy_variant(dst: Path, embedder: Path | None = None, parameters: dict[str, dict[str, str]] | None = None,
                 repository: Path = REPOSITORY, detector: Path | None = None) -> Path:
    """A copy of the repository with another served embedder and/or detector installed and/or
    other CPU-config parameters (``{model: {key: value}}``): how the evaluation compares variants."""
    _linked_copy(dst, repository)
    if embedder is not None:
        install("embedder", embedder, dst)
    if detector is not None:
        install("detector", detector, dst)
    all_configs = configs(CPU_CONFIG, dst)
    for name, values in (parameters or {}).items():
        cfg = all_configs[name]
        for key, value in values.items():
            if key not in cfg.parameters:
                raise KeyError(f"{name} has no parameter {key!r}")
            cfg.parameters[key].string_value = value
        _save_cpu_config(dst, name, cfg)
    return dst
