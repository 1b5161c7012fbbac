"""Triton Python model: encoded image bytes -> YOLO letterbox tensor + working image.

Batched: Triton's dynamic batcher hands ``execute`` several requests; each is decoded on
its own (images differ in size) and answered on its own, so one bad image fails only its
own request.
"""

import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_imaging  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = vs_imaging.config_parameters(args)
        self.size = int(params["detector_size"])
        self.max_pixels = int(params["max_pixels"])
        self.work_side = int(params["work_side"])

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            try:
                decoded = vs_imaging.decode(bytes(data), self.max_pixels, self.work_side)
            except vs_imaging.InvalidImage as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"invalid image: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            tensor, geometry = vs_imaging.prepare_detector_input(decoded, self.size)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("DETECTOR_INPUT", tensor[None]),
                pb_utils.Tensor("WORK_IMAGE", decoded.pixels[None]),
                pb_utils.Tensor("GEOMETRY", geometry[None]),
            ]))
        return responses
