"""Triton Python model: encoded image bytes -> YOLO letterbox tensor + working image.

Batched: Triton's dynamic batcher hands ``execute`` several requests; each is decoded on
its own (images differ in size) and answered on its own, so one bad image fails only its
own request, with INVALID_ARG (the search service maps it to INVALID_ARGUMENT).
"""

import triton_python_backend_utils as pb_utils

from services.triton_models import imaging
from services.triton_models.model_args import config_parameters, input_size, read_manifest


class TritonPythonModel:
    def initialize(self, args):
        params = config_parameters(args)
        self.size = input_size(read_manifest(args, "detector_manifest"))
        self.max_pixels = int(params["max_pixels"])
        self.work_side = int(params["work_side"])

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            try:
                decoded = imaging.decode(bytes(data), self.max_pixels, self.work_side)
            except imaging.InvalidImage as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            tensor, geometry = imaging.prepare_detector_input(decoded, self.size)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("DETECTOR_INPUT", tensor[None]),
                pb_utils.Tensor("WORK_IMAGE", decoded.pixels[None]),
                pb_utils.Tensor("GEOMETRY", geometry[None]),
            ]))
        return responses
