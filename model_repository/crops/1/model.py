"""Triton Python model (configs/cpu.pbtxt only): the embedder's crops with Pillow.

The GPU config serves 1/model.onnx instead, the same tensors made by an ONNX graph.
"""

import triton_python_backend_utils as pb_utils

from services.triton_models import imaging
from services.triton_models.model_args import input_size, read_manifest


class TritonPythonModel:
    def initialize(self, args):
        self.crop_size = input_size(read_manifest(args, "embedder_manifest"))

    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()[0]
            boxes = pb_utils.get_input_tensor_by_name(request, "boxes").as_numpy()
            views = int(pb_utils.get_input_tensor_by_name(request, "views").as_numpy()[0])
            crops = imaging.crops_of(pixels, boxes, self.crop_size, views)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("crops", crops)]))
        return responses
