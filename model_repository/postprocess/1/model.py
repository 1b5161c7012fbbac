"""Triton Python model: YOLO output -> NMS -> boxes in original pixels, and where to crop.

Always emits at least one row: with no detection the whole image is the only object and
FALLBACK is true (a zero-size batch would fail the batched embedder downstream). The crops
themselves are the ``crops`` model's job: this step never sees the working picture.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from services.triton_models import imaging
from services.triton_models.model_args import config_parameters, read_manifest


class TritonPythonModel:
    def initialize(self, args):
        self.classes = read_manifest(args, "detector_manifest")["classes"]
        self.settings = imaging.DetectionSettings.from_parameters(config_parameters(args))
        self.views = np.array([self.settings.whole_image_views], np.int64)

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        limit = pb_utils.get_input_tensor_by_name(request, "MAX_OBJECTS")
        floor = pb_utils.get_input_tensor_by_name(request, "MIN_SCORE")
        settings = self.settings.for_request(None if limit is None else int(limit.as_numpy()[0]),
                                             0.0 if floor is None else float(floor.as_numpy()[0]))
        found = imaging.locate(
            pb_utils.get_input_tensor_by_name(request, "DETECTIONS").as_numpy()[0],
            pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy()[0],
            len(self.classes), settings)
        labels = imaging.labels(found.class_ids, self.classes)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("BOXES", found.boxes),
            pb_utils.Tensor("SCORES", found.scores),
            pb_utils.Tensor("LABELS", np.array([s.encode() for s in labels], dtype=np.object_)),
            pb_utils.Tensor("CROP_BOXES", found.crop_boxes),
            pb_utils.Tensor("VIEWS", self.views),
            pb_utils.Tensor("FALLBACK", np.array([found.fallback], dtype=bool)),
        ])
