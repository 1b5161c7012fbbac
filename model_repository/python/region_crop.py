"""Triton Python model: encoded image + caller-given region -> one embedder crop.

REGION is x1, y1, x2, y2 in original-image pixels; all zeros means the whole image (how
catalog images are embedded without detection).
"""

import os
import sys

import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vs_imaging  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        params = vs_imaging.config_parameters(args)
        self.max_pixels = int(params["max_pixels"])
        self.work_side = int(params["work_side"])
        self.crop_size = int(params["crop_size"])

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            region = pb_utils.get_input_tensor_by_name(request, "REGION").as_numpy()
            try:
                decoded = vs_imaging.decode(bytes(data), self.max_pixels, self.work_side)
                crops, box = vs_imaging.region_crop(decoded, region, self.crop_size)
            except vs_imaging.InvalidImage as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"invalid image: {exc}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("CROPS", crops), pb_utils.Tensor("BOXES", box)]))
        return responses
