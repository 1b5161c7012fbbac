"""The manifest that travels next to every ONNX model.

A *raw* manifest describes a model as its author shipped it (tensor names, layout, colour
order, normalisation).  ``prepare`` turns a raw model into a *served* model with a uniform
contract and adds a ``serving`` section:

* detector: Ultralytics YOLO layout, input ``[B,3,S,S]`` RGB in 0..1, output
  ``[B,4+C,N]`` (cx, cy, w, h, class scores), class names in ``classes``;
* embedder: input ``pixels`` ``[B,3,H,W]`` RGB in 0..255 (normalisation baked into the
  graph), output ``embedding`` ``[B,D]`` L2-normalised.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
ROLES = ("detector", "embedder")


class ManifestError(ValueError):
    """A manifest is missing a field or holds a value the pipeline cannot serve."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where}: missing field {key!r}")
    return data[key]


def validate_raw(data: dict[str, Any], where: str) -> None:
    """Check a raw (author-supplied) manifest; raises ManifestError naming the field."""
    role = _require(data, "role", where)
    if role not in ROLES:
        raise ManifestError(f"{where}: role must be one of {ROLES}, got {role!r}")
    for key in ("name", "license", "input", "output"):
        _require(data, key, where)
    _require(data["input"], "name", f"{where} input")
    _require(data["output"], "name", f"{where} output")
    if role == "embedder":
        spec = data["input"]
        if spec.get("layout", "NCHW") not in ("NCHW", "NHWC"):
            raise ManifestError(f"{where}: input.layout must be NCHW or NHWC")
        if spec.get("color", "RGB") not in ("RGB", "BGR"):
            raise ManifestError(f"{where}: input.color must be RGB or BGR")
        for key in ("mean", "std"):
            values = spec.get(key, [0, 0, 0] if key == "mean" else [1, 1, 1])
            if len(values) != 3:
                raise ManifestError(f"{where}: input.{key} must have 3 values")
        if any(float(s) == 0 for s in spec.get("std", [1, 1, 1])):
            raise ManifestError(f"{where}: input.std must not contain 0")


def validate_served(data: dict[str, Any], where: str) -> None:
    validate_raw(data, where)
    serving = _require(data, "serving", where)
    for key in ("input", "output", "onnx_sha256"):
        _require(serving, key, f"{where} serving")
    if data["role"] == "detector" and not data.get("classes"):
        raise ManifestError(f"{where}: detector needs a non-empty 'classes' list")


def load(model_dir: Path, served: bool = True) -> dict[str, Any]:
    """The manifest of a model folder (``manifest.json`` next to ``model.onnx``)."""
    return load_file(Path(model_dir) / MANIFEST_NAME, served)


def load_file(path: Path, served: bool = True) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (run `make models`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    (validate_served if served else validate_raw)(data, str(path))
    return data


def save(model_dir: Path, data: dict[str, Any]) -> None:
    path = Path(model_dir) / MANIFEST_NAME
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
