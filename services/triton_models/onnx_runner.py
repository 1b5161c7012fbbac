"""Triton Python model: run an ONNX file with onnxruntime (CPU variant of detector/embedder).

Stands in for Triton's onnxruntime backend where that backend cannot be installed; same
model name, tensor names, shapes and types as the canonical GPU config. Requests that
Triton's dynamic batcher groups are concatenated into one onnxruntime call and split back.

One input runs on a session with a thread per CPU (the lowest latency at low load); a batch of
several runs as one equal part per CPU, each single-threaded, at once. One multi-threaded run of
the whole batch loses time in its threads' synchronisation, more so when the Python pre/post
models preempt one of its threads: with it a saturated 2-core pod reached 83-86 % of the same
models in one single-threaded process per core, with the parts 89-90 % (`make bench`).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

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
        # 0 = the container's CPU limit: onnxruntime's own default is the host's core count,
        # which oversubscribes a pod limited to a few CPUs.
        threads = int(params.get("intra_op_threads", "0")) or cpu_limit()
        version = os.path.join(args["model_repository"], args["model_version"])
        # The CPU configs prefer the INT8 file `make models` writes next to the float one.
        int8 = os.path.join(version, "model.int8.onnx")
        use_int8 = params.get("prefer_int8") == "1" and os.path.isfile(int8)
        path = int8 if use_int8 else os.path.join(version, "model.onnx")
        # Spinning threads burn the cores that the other instances and the Python pre/post
        # models need; with several instances per core, sleeping waits are faster overall.
        spinning = params.get("allow_spinning", "1")
        self.session = _session(path, threads, spinning)
        # One single-threaded session runs the parts: onnxruntime sessions may run from several
        # threads at once, and release the GIL while they do.
        self.parts = threads if threads > 1 else 0
        self.part_session = _session(path, 1, spinning) if self.parts else None
        self.pool = ThreadPoolExecutor(self.parts, thread_name_prefix="part") if self.parts else None
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
        result = self._run(batch)
        responses, start = [], 0
        for size in sizes:
            part = np.ascontiguousarray(result[start:start + size])
            start += size
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, part)]))
        return responses

    def _run(self, batch: np.ndarray) -> np.ndarray:
        even = len(batch) // self.parts * self.parts if self.parts else 0
        if not even:
            return self.session.run([self.model_output], {self.model_input: batch})[0]
        # Equal parts keep every core busy to the end; the rest (fewer inputs than cores)
        # runs after them on all cores at once.
        runs = [self.pool.submit(self.part_session.run, [self.model_output], {self.model_input: part})
                for part in np.split(batch[:even], self.parts)]
        results = [run.result()[0] for run in runs]
        if even < len(batch):
            results.append(self.session.run([self.model_output], {self.model_input: batch[even:]})[0])
        return np.concatenate(results)

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown()


def _session(path: str, threads: int, spinning: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _served_manifest(args) -> dict:
    path = os.path.join(args["model_repository"], "manifest.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)
