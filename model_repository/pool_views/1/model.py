"""Triton Python model: the whole image's views -> its one embedding (see config.pbtxt)."""

import triton_python_backend_utils as pb_utils

from services.triton_models import views


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            embeddings = pb_utils.get_input_tensor_by_name(request, "CROP_EMBEDDINGS").as_numpy()
            objects = len(pb_utils.get_input_tensor_by_name(request, "BOXES").as_numpy())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("EMBEDDINGS", views.pool_views(embeddings, objects))]))
        return responses
