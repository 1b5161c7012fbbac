"""The ensemble's pipeline run in-process with onnxruntime: the reference and the speed limit.

Uses the same image code (``services.triton_models.imaging``), the same ONNX files and the
same settings as ``model_repository/``, so any difference between the two is Triton
transport, batching or wiring.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.triton_models import imaging, views
from tools.models import manifest as mf
from tools.models.repository import CPU_CONFIG, INT8_NAME, REPOSITORY, PipelineSettings, installed


@dataclass
class PipelineResult:
    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]
    embeddings: np.ndarray
    fallback: bool


class LocalPipeline:
    """decode -> letterbox -> YOLO -> NMS/crop -> embedder -> pool views, in this process."""

    def __init__(self, detector: tuple[Path, dict], embedder: tuple[Path, dict],
                 settings: PipelineSettings | None = None, threads: int = 0) -> None:
        """``detector`` / ``embedder``: (ONNX file, served manifest)."""
        self.settings = settings or PipelineSettings.from_repository()
        (detector_onnx, self.detector_manifest), (embedder_onnx, self.embedder_manifest) = detector, embedder
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.detector = ort.InferenceSession(str(detector_onnx), options, providers=["CPUExecutionProvider"])
        self.embedder = ort.InferenceSession(str(embedder_onnx), options, providers=["CPUExecutionProvider"])
        self.classes = self.detector_manifest["classes"]
        self.size = self.detector_manifest["serving"]["input"]["shape"][1]
        self.crop_size = self.embedder_manifest["serving"]["input"]["shape"][1]

    @classmethod
    def from_repository(cls, repository: Path = REPOSITORY, variant: str = CPU_CONFIG,
                        detector_dir: Path | None = None, **kwargs: object) -> LocalPipeline:
        """The files the Triton repository serves in ``variant`` (CPU: INT8 where there is
        one), with its settings; ``detector_dir``: another served detector folder in place of
        the installed one, in the same precision."""
        detector = installed("detector", repository, variant)
        if detector_dir is not None:
            onnx_file = detector_dir / (INT8_NAME if detector[0].name == INT8_NAME else mf.MODEL_NAME)
            detector = (onnx_file, mf.load(detector_dir))
        return cls(detector, installed("embedder", repository, variant), PipelineSettings.from_repository(repository),
                   **kwargs)

    @classmethod
    def with_embedder(cls, embedder_dir: Path, int8: bool = False, **kwargs: object) -> LocalPipeline:
        """The installed detector with another served embedder folder (model.onnx + manifest.json),
        both float or both INT8."""
        embedder = Path(embedder_dir) / (INT8_NAME if int8 else mf.MODEL_NAME)
        return cls(installed("detector", variant=CPU_CONFIG if int8 else "gpu"), (embedder, mf.load(embedder_dir)),
                   **kwargs)

    def decode(self, data: bytes) -> imaging.Decoded:
        return imaging.decode(data, self.settings.max_pixels, self.settings.work_side)

    def locate(self, decoded: imaging.Decoded, max_objects: int | None = None,
               min_score: float = 0.0) -> imaging.Located:
        """What the postprocess model makes of a decoded photo: boxes and crop boxes (at most
        ``max_objects``, from ``min_score``, as the ensemble's MAX_OBJECTS and MIN_SCORE ask)."""
        raw, geometry = self.detector_output(decoded)
        return imaging.locate(raw, geometry, len(self.classes),
                              self.settings.detection.for_request(max_objects, min_score))

    def detector_output(self, decoded: imaging.Decoded) -> tuple[np.ndarray, np.ndarray]:
        """The detector's raw output for a decoded photo and the letterbox geometry that
        ``imaging.locate`` needs: one detector run, which any detection settings can then read."""
        tensor, geometry = imaging.prepare_detector_input(decoded, self.size)
        det = self.detector_manifest["serving"]
        return self.detector.run([det["output"]["name"]], {det["input"]["name"]: tensor[None]})[0][0], geometry

    def detect(self, data: bytes | imaging.Decoded, max_objects: int | None = None,
               min_score: float = 0.0) -> imaging.Detections:
        """Boxes and crops of an encoded photo, or of one already decoded with ``decode``."""
        decoded = self.decode(data) if isinstance(data, bytes) else data
        found = self.locate(decoded, max_objects, min_score)
        crops = imaging.crops_of(decoded.pixels, found.crop_boxes, self.crop_size,
                                 self.settings.detection.whole_image_views)
        return imaging.Detections(found.boxes, found.scores, found.class_ids, crops, found.fallback)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        emb = self.embedder_manifest["serving"]
        return self.embedder.run([emb["output"]["name"]], {emb["input"]["name"]: crops})[0]

    def embed_found(self, found: imaging.Detections) -> np.ndarray:
        """One embedding per box, the whole image's pooled from its views (as pool_views does)."""
        return views.pool_views(self.embed(found.crops), len(found.boxes))

    def detect_and_embed(self, data: bytes, max_objects: int | None = None,
                         min_score: float = 0.0) -> PipelineResult:
        found = self.detect(data, max_objects, min_score)
        return PipelineResult(found.boxes, found.scores, imaging.labels(found.class_ids, self.classes),
                              self.embed_found(found), found.fallback)
