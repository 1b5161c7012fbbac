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


class TritonPythonModel:
    def initialize(self, args):
        params = vs_imaging.config_parameters(args)
        self.classes = json.loads(params["classes"])
        self.score_threshold = float(params["score_threshold"])
        self.iou_threshold = float(params["iou_threshold"])
        self.max_objects = int(params["max_objects"])
        self.crop_size = int(params["crop_size"])

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        found = vs_imaging.objects_from_detections(
            pb_utils.get_input_tensor_by_name(request, "DETECTIONS").as_numpy()[0],
            pb_utils.get_input_tensor_by_name(request, "WORK_IMAGE").as_numpy()[0],
            pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy()[0],
            len(self.classes), self.score_threshold, self.iou_threshold, self.max_objects, self.crop_size)
        labels = [vs_imaging.FALLBACK_LABEL if c < 0 else self.classes[c] for c in found.class_ids]
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("BOXES", found.boxes),
            pb_utils.Tensor("SCORES", found.scores),
            pb_utils.Tensor("LABELS", np.array([s.encode() for s in labels], dtype=np.object_)),
            pb_utils.Tensor("CROPS", found.crops),
            pb_utils.Tensor("FALLBACK", np.array([found.fallback], dtype=bool)),
        ])
