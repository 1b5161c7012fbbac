"""What a Python-backend model reads from ``initialize(args)``: its config parameters, the
manifests of the served models that ``make models`` installs next to them, and the other
models' configs."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from services.triton_models import views


def config_parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` of the model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def parameter_path(args: dict, parameter: str) -> Path:
    """A file named by a parameter, relative to this model's folder (e.g. ../detector/manifest.json)."""
    return (Path(args["model_repository"]) / config_parameters(args)[parameter]).resolve()


def read_manifest(args: dict, parameter: str) -> dict[str, Any]:
    path = parameter_path(args, parameter)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make models` to install the served models")
    return json.loads(path.read_text())


def input_size(manifest: dict[str, Any]) -> int:
    """The square input side of a served detector or embedder ([3, S, S])."""
    return int(manifest["serving"]["input"]["shape"][1])


_PARAMETER = re.compile(r'parameters\s*\{\s*key:\s*"([^"]+)"\s*value\s*\{\s*string_value:\s*"([^"]*)"\s*\}\s*\}')


def config_file_parameters(path: Path) -> dict[str, str]:
    """The ``parameters`` of another model's config.pbtxt (not the comments)."""
    return dict(_PARAMETER.findall(path.read_text()))


def int8_sha256(manifest: dict[str, Any]) -> str:
    """sha256 of a served model's INT8 copy (what the CPU configs serve); "" where it has none."""
    return (manifest["serving"].get("int8") or {}).get("onnx_sha256", "")


def pipeline_fingerprint(config_paths: list[Path], manifests: tuple[dict[str, Any], ...] = ()) -> str:
    """sha256 of the parameters (not the comments) of the configs that shape what is embedded,
    of the whole-image views' recipe, and of the models' INT8 copies: an image whose rows were
    made under other settings, views or INT8 files is embedded again on its next import. (The
    float files' sha256 name the collection itself; an INT8 copy is the same model to within
    its quantization error, so a new one, from a new calibration or onnxruntime, refreshes the
    rows in place instead of needing a new collection.)"""
    digest = hashlib.sha256(f"views:{views.RECIPE}".encode())
    for path in config_paths:
        parameters = sorted(config_file_parameters(path).items())
        digest.update(json.dumps([path.parent.name, parameters]).encode())
    for manifest in manifests:
        if int8_sha256(manifest):
            digest.update(f"int8:{manifest['role']}:{int8_sha256(manifest)}".encode())
    return digest.hexdigest()
