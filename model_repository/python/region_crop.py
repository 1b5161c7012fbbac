"""Triton Python model: encoded image + caller-given region -> one embedder crop.

REGION is x1, y1, x2, y2 in original-image pixels; all zeros means the whole image (how
catalog images are embedded without detection).
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
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.max_pixels = int(params["max_pixels"])
        self.work_side = int(params["work_side"])
        self.crop_size = int(params["crop_size"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except vs_imaging.InvalidImage as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"invalid image: {exc}", pb_utils.TritonError.INVALID_ARG)))
        return responses

    def _one(self, request):
        data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
        region = pb_utils.get_input_tensor_by_name(request, "REGION").as_numpy().reshape(-1).astype(np.float64)
        decoded = vs_imaging.decode(bytes(data), self.max_pixels, self.work_side)
        width, height = decoded.width, decoded.height
        if not np.any(region):
            region = np.array([0, 0, width, height], np.float64)
        if not np.all(np.isfinite(region)):
            raise vs_imaging.InvalidImage("region holds a non-finite coordinate")
        x1, y1, x2, y2 = np.clip(region, 0, [width, height, width, height])
        if x2 - x1 < 2 or y2 - y1 < 2:
            raise vs_imaging.InvalidImage(
                f"region {region.tolist()} is empty or outside the {width}x{height} image "
                "(x1, y1, x2, y2 in original pixels, x2 > x1, y2 > y1)")
        box = np.array([[x1, y1, x2, y2]], np.float32)
        work = box / np.array([decoded.scale_x, decoded.scale_y] * 2, np.float32)
        crops = vs_imaging.crop_resize(decoded.pixels, work, self.crop_size)
        return pb_utils.InferenceResponse([
            pb_utils.Tensor("CROPS", crops),
            pb_utils.Tensor("BOXES", box),
        ])
