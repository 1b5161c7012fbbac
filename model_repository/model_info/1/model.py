"""Triton Python model: the served detector's and embedder's manifests as JSON strings, the
fingerprint of the image pipeline's settings (preprocess and postprocess parameters, and the
models' INT8 copies), and the detection settings (postprocess score_threshold and max_objects).

Read once at load, so they describe the files and settings Triton actually serves.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from services.triton_models.model_args import (
    config_file_parameters,
    parameter_path,
    pipeline_fingerprint,
    read_manifest,
)


class TritonPythonModel:
    def initialize(self, args):
        manifests = {name: read_manifest(args, f"{name.lower()}_manifest") for name in ("DETECTOR", "EMBEDDER")}
        self.outputs = {name: np.array([json.dumps(manifest).encode()], dtype=np.object_)
                        for name, manifest in manifests.items()}
        configs = [parameter_path(args, "preprocess_config"), parameter_path(args, "postprocess_config")]
        fingerprint = pipeline_fingerprint(configs, tuple(manifests.values()))
        self.outputs["PIPELINE"] = np.array([fingerprint.encode()], dtype=np.object_)
        post = config_file_parameters(configs[1])
        detection = {"score_threshold": float(post["score_threshold"]), "max_objects": int(post["max_objects"])}
        self.outputs["DETECTION"] = np.array([json.dumps(detection).encode()], dtype=np.object_)

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(name, value) for name, value in self.outputs.items()])
                for _ in requests]
