"""The ensemble's pipeline run in-process with onnxruntime: the reference and the speed limit.

Uses the same image code (``model_repository/python/vs_imaging.py``), the same ONNX files
and the same settings as the Triton repository, so any difference between the two is
Triton transport, batching or wiring.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.models import manifest as mf
from services.models.repository import PYTHON_SOURCES, SHARED_MODULE, PipelineSettings


def load_imaging() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("vs_imaging", PYTHON_SOURCES / SHARED_MODULE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


vs_imaging = load_imaging()


@dataclass
class PipelineResult:
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    embeddings: np.ndarray
    fallback: bool


class LocalPipeline:
    """decode -> letterbox -> YOLO -> NMS/crop -> embedder, in this process."""

    def __init__(self, detector_dir: Path, embedder_dir: Path, settings: PipelineSettings | None = None,
                 threads: int = 0) -> None:
        self.settings = settings or PipelineSettings()
        self.detector_manifest = mf.load(Path(detector_dir))
        self.embedder_manifest = mf.load(Path(embedder_dir))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.detector = ort.InferenceSession(str(Path(detector_dir) / mf.MODEL_NAME), options,
                                             providers=["CPUExecutionProvider"])
        self.embedder = ort.InferenceSession(str(Path(embedder_dir) / mf.MODEL_NAME), options,
                                             providers=["CPUExecutionProvider"])
        self.classes = self.detector_manifest["classes"]
        self.size = self.detector_manifest["serving"]["input"]["shape"][1]
        self.crop_size = self.embedder_manifest["serving"]["input"]["shape"][1]

    @classmethod
    def from_models_dir(cls, models_dir: Path, **kwargs: object) -> LocalPipeline:
        """The installed pair: ``models_dir/detector`` and ``models_dir/embedder``."""
        return cls(Path(models_dir) / "detector", Path(models_dir) / "embedder", **kwargs)

    def detect(self, data: bytes):  # -> vs_imaging.Detections  # noqa: ANN201
        s = self.settings
        decoded = vs_imaging.decode(data, s.max_pixels, s.work_side)
        tensor, geometry = vs_imaging.prepare_detector_input(decoded, self.size)
        det = self.detector_manifest["serving"]
        raw = self.detector.run([det["output"]["name"]], {det["input"]["name"]: tensor[None]})[0][0]
        return vs_imaging.objects_from_detections(raw, decoded.pixels, geometry, len(self.classes),
                                                  s.score_threshold, s.iou_threshold, s.max_objects,
                                                  self.crop_size)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        emb = self.embedder_manifest["serving"]
        return self.embedder.run([emb["output"]["name"]], {emb["input"]["name"]: crops})[0]

    def detect_and_embed(self, data: bytes) -> PipelineResult:
        found = self.detect(data)
        labels = [vs_imaging.FALLBACK_LABEL if c < 0 else self.classes[c] for c in found.class_ids]
        return PipelineResult(found.boxes, found.scores, labels, self.embed(found.crops), found.fallback)
