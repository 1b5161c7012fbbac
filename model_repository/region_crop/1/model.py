"""Triton Python model: encoded image + caller-given region -> one embedder crop.

REGION is x1, y1, x2, y2 in original-image pixels; all zeros means the whole image (how
catalog images are embedded without detection). A bad image or region fails the request
with INVALID_ARG.
"""

import triton_python_backend_utils as pb_utils

from services.triton_models import imaging
from services.triton_models.model_args import config_parameters, input_size, read_manifest


class TritonPythonModel:
    def initialize(self, args):
        params = config_parameters(args)
        self.max_pixels = int(params["max_pixels"])
        self.work_side = int(params["work_side"])
        self.crop_size = input_size(read_manifest(args, "embedder_manifest"))

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)[0]
            region = pb_utils.get_input_tensor_by_name(request, "REGION").as_numpy()
            try:
                decoded = imaging.decode(bytes(data), self.max_pixels, self.work_side)
                crops, box = imaging.region_crop(decoded, region, self.crop_size)
            except imaging.InvalidImage as exc:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("CROPS", crops), pb_utils.Tensor("BOXES", box)]))
        return responses
