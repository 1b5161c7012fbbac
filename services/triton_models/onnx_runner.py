"""Triton Python model: run an ONNX file with onnxruntime (CPU variant of detector/embedder).

Stands in for Triton's onnxruntime backend where that backend cannot be installed; same
model name, tensor names, shapes and types as the canonical GPU config. Requests that
Triton's dynamic batcher groups are concatenated into one onnxruntime call and split back.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from services.triton_models.cpu_limit import cpu_limit
from services.triton_models.model_args import config_parameters


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config_parameters(args)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        options = ort.SessionOptions()
        # 0 = the container's CPU limit: onnxruntime's own default is the host's core count,
        # which oversubscribes a pod limited to a few CPUs.
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0")) or cpu_limit()
        options.inter_op_num_threads = 1
        # Spinning threads burn the cores that the other instances and the Python pre/post
        # models need; with several instances per core, sleeping waits are faster overall.
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "1"))
        version = os.path.join(args["model_repository"], args["model_version"])
        # The CPU configs prefer the INT8 file `make models` writes next to the float one.
        int8 = os.path.join(version, "model.int8.onnx")
        use_int8 = params.get("prefer_int8") == "1" and os.path.isfile(int8)
        path = int8 if use_int8 else os.path.join(version, "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        # A model served exactly as published (its licence forbids rewriting it) keeps its own
        # tensor names and layout; its manifest says which, and this model adapts to them.
        serving = _served_manifest(args).get("serving", {})
        self.model_input = serving.get("model_input", {}).get("name", self.input_name)
        self.model_output = serving.get("model_output", {}).get("name", self.output_name)
        self.channels_last = serving.get("model_input", {}).get("layout") == "NHWC"

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        if self.channels_last:
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        result = self.session.run([self.model_output], {self.model_input: batch})[0]
        responses, start = [], 0
        for size in sizes:
            part = np.ascontiguousarray(result[start:start + size])
            start += size
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses


def _served_manifest(args) -> dict:
    path = os.path.join(args["model_repository"], "manifest.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)
