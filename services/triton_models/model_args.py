"""What a Python-backend model reads from ``initialize(args)``: its config parameters and the
manifests of the served models that ``make models`` installs next to them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def config_parameters(args: dict) -> dict[str, str]:
    """The ``parameters`` of the model's config.pbtxt."""
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def manifest_path(args: dict, parameter: str) -> Path:
    """A manifest named by a parameter, relative to this model's folder (e.g. ../detector/manifest.json)."""
    return (Path(args["model_repository"]) / config_parameters(args)[parameter]).resolve()


def read_manifest(args: dict, parameter: str) -> dict[str, Any]:
    path = manifest_path(args, parameter)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make models` to install the served models")
    return json.loads(path.read_text())


def input_size(manifest: dict[str, Any]) -> int:
    """The square input side of a served detector or embedder ([3, S, S])."""
    return int(manifest["serving"]["input"]["shape"][1])
