"""Triton Python model: YOLO output -> NMS -> boxes in original pixels + embedder crops.

Always emits at least one crop: with no detection the whole image is the only object and
FALLBACK is true (a zero-size batch would fail the batched embedder downstream).
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from services.triton_models import imaging
from services.triton_models.model_args import config_parameters, input_size, read_manifest


class TritonPythonModel:
    def initialize(self, args):
        params = config_parameters(args)
        self.classes = read_manifest(args, "detector_manifest")["classes"]
        self.crop_size = input_size(read_manifest(args, "embedder_manifest"))
        self.settings = imaging.DetectionSettings.from_parameters(params)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        found = imaging.objects_from_detections(
            pb_utils.get_input_tensor_by_name(request, "DETECTIONS").as_numpy()[0],
            pb_utils.get_input_tensor_by_name(request, "WORK_IMAGE").as_numpy()[0],
            pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy()[0],
            len(self.classes), self.settings, self.crop_size)
        labels = imaging.labels(found.class_ids, self.classes)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("BOXES", found.boxes),
            pb_utils.Tensor("SCORES", found.scores),
            pb_utils.Tensor("LABELS", np.array([s.encode() for s in labels], dtype=np.object_)),
            pb_utils.Tensor("CROPS", found.crops),
            pb_utils.Tensor("FALLBACK", np.array([found.fallback], dtype=bool)),
        ])
