"""The Triton contract and the service's async client for it.

The one place that knows the ensembles' names and tensors (model_repository/ declares the
same), builds their requests, reads their results and maps Triton's errors to ours. The
search service calls Triton through ``TritonClient``; the local launcher, the benchmark and
the tests build their requests with the same functions.
"""

from __future__ import annotations

import io
import json
import logging
import re

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from PIL import Image
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException

from services.api import message_size_options
from services.domain import REGION_LABEL, WHOLE_IMAGE_LABEL, ModelVersions
from services.search.config import Settings
from services.search.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ServiceError
from services.search.objects import Objects, single

log = logging.getLogger(__name__)

# Ensembles and models the service calls (model_repository/<name>/config.pbtxt).
# IMAGE [1,1] (+ optional MAX_OBJECTS [1], MIN_SCORE [1]) -> BOXES, SCORES, LABELS, EMBEDDINGS, FALLBACK; the last
# row is the whole image
DETECT_ENSEMBLE = "detect_and_embed"
REGION_ENSEMBLE = "embed_region"  # IMAGE [1] + REGION [4] -> EMBEDDINGS [1,D], BOXES [1,4]
MODEL_INFO = "model_info"  # -> DETECTOR, EMBEDDER (manifests), PIPELINE (fingerprint), DETECTION (JSON)
# Tensors.
IMAGE, REGION, MAX_OBJECTS, MIN_SCORE = "IMAGE", "REGION", "MAX_OBJECTS", "MIN_SCORE"
BOXES, SCORES, LABELS, EMBEDDINGS, FALLBACK = "BOXES", "SCORES", "LABELS", "EMBEDDINGS", "FALLBACK"
DETECT_OUTPUTS = (BOXES, SCORES, LABELS, EMBEDDINGS, FALLBACK)
REGION_OUTPUTS = (EMBEDDINGS, BOXES)
WHOLE_IMAGE = (0.0, 0.0, 0.0, 0.0)  # REGION meaning "the whole image"
# The Python models reject undecodable images and bad regions with Triton's INVALID_ARG,
# which reaches the client as this status; the service never sends a malformed request
# itself (every request comes from the builders below), so it always means bad caller input.
INVALID_INPUT_STATUS = str(grpc.StatusCode.INVALID_ARGUMENT)


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 200, 200)).save(buf, format="PNG")
    return buf.getvalue()


_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")  # Triton's, before the model's own message
PROBE_IMAGE = _tiny_png()  # readiness: a real inference (a model can report ready with a dead stub)
# gRPC's reconnect backoff grows to 120 s by default: after a long Triton outage the channel
# would wait up to two minutes before trying the Triton that is back. Capped at 1 s, a returning
# Triton is used within about a second (a dead one costs a connection attempt per second).
RECONNECT_BACKOFF = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                     ("grpc.max_reconnect_backoff_ms", 1000)]


def detect_request(image: bytes, max_objects: int | None = None, min_score: float = 0.0
                   ) -> tuple[str, list[InferInput]]:
    """``max_objects``: crop and embed only the best this many objects (None: every box the
    postprocess keeps, as a catalog import needs); ``min_score``: only objects scored this or
    more, dropped before the best ``max_objects`` are chosen (0: no floor, nothing sent)."""
    tensor = InferInput(IMAGE, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    inputs = [tensor]
    if max_objects is not None:
        limit = InferInput(MAX_OBJECTS, [1], "INT32")
        limit.set_data_from_numpy(np.array([max_objects], np.int32))
        inputs.append(limit)
    if min_score > 0:
        floor = InferInput(MIN_SCORE, [1], "FP32")
        floor.set_data_from_numpy(np.array([min_score], np.float32))
        inputs.append(floor)
    return DETECT_ENSEMBLE, inputs


def region_request(image: bytes, region: tuple[float, float, float, float] | None
                   ) -> tuple[str, list[InferInput]]:
    tensor = InferInput(IMAGE, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    box = InferInput(REGION, [4], "FP32")
    box.set_data_from_numpy(np.asarray(region or WHOLE_IMAGE, np.float32))
    return REGION_ENSEMBLE, [tensor, box]


def objects_from(result: InferResult) -> Objects:
    """Every row of the detect ensemble: the detected objects, then the whole image (its last
    row, flagged)."""
    boxes, scores, embeddings = result.as_numpy(BOXES), result.as_numpy(SCORES), result.as_numpy(EMBEDDINGS)
    labels = [label.decode() for label in result.as_numpy(LABELS)]
    whole = np.zeros(len(labels), bool)
    whole[-1] = True
    return Objects(boxes.reshape(-1, 4), scores, labels, embeddings, whole)


def region_from(result: InferResult, label: str) -> Objects:
    """The region ensemble's one row, labelled ``label`` (a region, or the whole image)."""
    return single(result.as_numpy(BOXES)[0], result.as_numpy(EMBEDDINGS)[0], label)


def model_versions_from(result: InferResult) -> ModelVersions:
    detector = json.loads(result.as_numpy("DETECTOR")[0])
    embedder = json.loads(result.as_numpy("EMBEDDER")[0])
    detection = json.loads(result.as_numpy("DETECTION")[0])
    quality = embedder.get("quality") or {}
    return ModelVersions(detector["name"], detector["serving"]["onnx_sha256"], embedder["name"],
                         embedder["serving"]["onnx_sha256"], int(embedder["serving"]["output"]["shape"][-1]),
                         result.as_numpy("PIPELINE")[0].decode(),
                         float(quality.get("recommended_min_similarity", 0.0)),
                         float(detection["score_threshold"]), int(detection["max_objects"]))


def map_error(exc: InferenceServerException, url: str) -> ServiceError:
    status, message = exc.status() or "", exc.message() or str(exc)
    if status == INVALID_INPUT_STATUS:
        return InvalidInput(f"invalid image: {_ENSEMBLE_PREFIX.sub('', message)}")
    if status == str(grpc.StatusCode.DEADLINE_EXCEEDED) or "Deadline Exceeded" in message:
        return DeadlineExceeded(f"Triton: {message}")
    return BackendUnavailable(f"Triton at {url} is unavailable or failing: {message}")


class TritonClient:
    """Async calls to the ensembles (``tritonclient.grpc.aio``), errors mapped to ours."""

    def __init__(self, url: str, max_message_bytes: int, default_timeout_s: float, tls_ca: str = "",
                 tls_cert: str = "", tls_key: str = "") -> None:
        self.url = url
        self.default_timeout_s = default_timeout_s
        # round_robin: with a dns:/// target over a headless Service, each call goes to the
        # next Triton pod instead of pinning one HTTP/2 connection to one pod.
        channel_args = [*message_size_options(max_message_bytes), ("grpc.lb_policy_name", "round_robin"),
                        *RECONNECT_BACKOFF]
        tls = {"ssl": True, "root_certificates": tls_ca, "private_key": tls_key or None,
               "certificate_chain": tls_cert or None} if tls_ca else {}
        self._client = triton_aio.InferenceServerClient(url, channel_args=channel_args, **tls)

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonClient:
        return cls(settings.triton_url, settings.max_message_bytes, settings.triton_timeout_s,
                   settings.triton_tls_ca, settings.triton_tls_cert, settings.triton_tls_key)

    async def close(self) -> None:
        await self._client.close()

    async def _infer(self, request: tuple[str, list[InferInput]], remaining_s: float | None) -> InferResult:
        """One call, bounded by VS_TRITON_TIMEOUT_S and sent with the caller's remaining time
        as its gRPC deadline (the caller's deadline itself is enforced by ``backends.timed``)."""
        model, inputs = request
        timeout = self.default_timeout_s
        if remaining_s is not None:
            timeout = max(0.001, min(remaining_s, timeout))
        try:
            return await self._client.infer(model, inputs, client_timeout=timeout)
        except InferenceServerException as exc:
            raise map_error(exc, self.url) from None

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None,
                               max_objects: int | None = None, min_score: float = 0.0) -> Objects:
        return objects_from(await self._infer(detect_request(image, max_objects, min_score), remaining_s))

    async def embed_region(self, image: bytes, region: tuple[float, float, float, float] | None,
                           remaining_s: float | None = None) -> Objects:
        """One row: ``region`` clipped to the photo (labelled a region), or the whole image
        when ``region`` is None."""
        label = WHOLE_IMAGE_LABEL if region is None else REGION_LABEL
        return region_from(await self._infer(region_request(image, region), remaining_s), label)

    async def probe(self) -> None:
        """A real small inference: a model can report ready while its stub is dead."""
        await self.embed_region(PROBE_IMAGE, None, remaining_s=min(10.0, self.default_timeout_s))

    async def model_versions(self) -> ModelVersions:
        return model_versions_from(await self._infer((MODEL_INFO, []), min(10.0, self.default_timeout_s)))
