"""Triton Python model: YOLO output -> NMS -> boxes in original pixels + embedder crops.

Always emits at least one crop: with no detection the whole image is the only object and
FALLBACK is true (a zero-size batch would fail the batched embedder downstream).
"""

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_imaging  # noqa: E402

FALLBACK_LABEL = "image"


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.classes = json.loads(params["classes"])
        self.score_threshold = float(params["score_threshold"])
        self.iou_threshold = float(params["iou_threshold"])
        self.max_objects = int(params["max_objects"])
        self.crop_size = int(params["crop_size"])

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "DETECTIONS").as_numpy()[0]
        pixels = pb_utils.get_input_tensor_by_name(request, "WORK_IMAGE").as_numpy()[0]
        ratio, pad_x, pad_y, scale_x, scale_y, width, height = (
            pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy()[0].tolist())
        boxes, scores, classes = vs_imaging.detect(
            raw, len(self.classes), self.score_threshold, self.iou_threshold, self.max_objects)
        h, w = pixels.shape[:2]
        # letterbox px -> working-image px, clipped; drop boxes that collapse to nothing
        work = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], np.float32)) / ratio
        work = np.clip(work, 0, [w, h, w, h]).astype(np.float32)
        valid = ((work[:, 2] - work[:, 0]) >= 2) & ((work[:, 3] - work[:, 1]) >= 2)
        work, scores, classes = work[valid], scores[valid], classes[valid]
        fallback = len(work) == 0
        if fallback:
            work = np.array([[0, 0, w, h]], np.float32)
            scores = np.zeros((1,), np.float32)
            labels = [FALLBACK_LABEL]
        else:
            labels = [self.classes[c] for c in classes]
        original = work * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
        original = np.clip(original, 0, [width, height, width, height]).astype(np.float32)
        crops = vs_imaging.crop_resize(pixels, work, self.crop_size)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("BOXES", original),
            pb_utils.Tensor("SCORES", scores.astype(np.float32)),
            pb_utils.Tensor("LABELS", np.array([s.encode() for s in labels], dtype=np.object_)),
            pb_utils.Tensor("CROPS", crops),
            pb_utils.Tensor("FALLBACK", np.array([fallback], dtype=bool)),
        ])
