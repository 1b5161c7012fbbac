"""The Triton contract and the service's async client for it.

The one place that knows the ensembles' names and tensors (model_repository/ declares the
same), builds their requests, reads their results and maps Triton's errors to ours. The
search service calls Triton through ``TritonClient``; the local launcher, the benchmark and
the tests build their requests with the same functions.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from dataclasses import dataclass, replace

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from PIL import Image
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException

from services.api import message_size_options
from services.search.config import Settings
from services.search.errors import BackendUnavailable, DeadlineExceeded, InvalidInput, ServiceError

log = logging.getLogger(__name__)

# Ensembles and models the service calls (model_repository/<name>/config.pbtxt).
# IMAGE [1,1] -> BOXES, SCORES, LABELS, EMBEDDINGS, FALLBACK; the last row is the whole image
DETECT_ENSEMBLE = "detect_and_embed"
REGION_ENSEMBLE = "embed_region"  # IMAGE [1] + REGION [4] -> EMBEDDINGS [1,D], BOXES [1,4]
MODEL_INFO = "model_info"  # -> DETECTOR, EMBEDDER: the served models' manifests as JSON; PIPELINE
# Tensors.
IMAGE, REGION = "IMAGE", "REGION"
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


@dataclass
class Objects:
    boxes: np.ndarray  # Kx4 original pixels (K may be 0)
    scores: np.ndarray  # K
    labels: list[str]
    embeddings: np.ndarray  # KxD, unit length
    whole_box: np.ndarray  # 4: the whole image in original pixels
    whole_embedding: np.ndarray  # D: the whole image's vector

    def confident(self, min_score: float) -> Objects:
        """The objects scoring at least ``min_score`` (the whole image stays)."""
        keep = np.flatnonzero(np.asarray(self.scores) >= min_score)
        if len(keep) == len(self.labels):
            return self
        return replace(self, boxes=self.boxes[keep], scores=self.scores[keep],
                       labels=[self.labels[i] for i in keep], embeddings=self.embeddings[keep])


@dataclass(frozen=True)
class ModelVersions:
    detector: str
    detector_sha256: str
    embedder: str
    embedder_sha256: str
    dimension: int
    pipeline: str = ""  # fingerprint of the image pipeline's settings (model_info's PIPELINE)


def detect_request(image: bytes) -> tuple[str, list[InferInput]]:
    tensor = InferInput(IMAGE, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    return DETECT_ENSEMBLE, [tensor]


def region_request(image: bytes, region: tuple[float, float, float, float] | None
                   ) -> tuple[str, list[InferInput]]:
    tensor = InferInput(IMAGE, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    box = InferInput(REGION, [4], "FP32")
    box.set_data_from_numpy(np.asarray(region or WHOLE_IMAGE, np.float32))
    return REGION_ENSEMBLE, [tensor, box]


def objects_from(result: InferResult) -> Objects:
    """The detected objects and, apart, the whole image (the ensemble's last row)."""
    boxes, scores, embeddings = result.as_numpy(BOXES), result.as_numpy(SCORES), result.as_numpy(EMBEDDINGS)
    labels = [label.decode() for label in result.as_numpy(LABELS)]
    return Objects(boxes[:-1], scores[:-1], labels[:-1], embeddings[:-1], boxes[-1], embeddings[-1])


def region_from(result: InferResult) -> tuple[np.ndarray, np.ndarray]:
    """(EMBEDDINGS 1xD, BOXES 1x4)."""
    return result.as_numpy(EMBEDDINGS), result.as_numpy(BOXES)


def model_versions_from(result: InferResult) -> ModelVersions:
    detector = json.loads(result.as_numpy("DETECTOR")[0])
    embedder = json.loads(result.as_numpy("EMBEDDER")[0])
    return ModelVersions(detector["name"], detector["serving"]["onnx_sha256"], embedder["name"],
                         embedder["serving"]["onnx_sha256"], int(embedder["serving"]["output"]["shape"][-1]),
                         result.as_numpy("PIPELINE")[0].decode())


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
        channel_args = [*message_size_options(max_message_bytes), ("grpc.lb_policy_name", "round_robin")]
        tls = {"ssl": True, "root_certificates": tls_ca, "private_key": tls_key or None,
               "certificate_chain": tls_cert or None} if tls_ca else {}
        self._client = triton_aio.InferenceServerClient(url, channel_args=channel_args, **tls)

    @classmethod
    def from_settings(cls, settings: Settings) -> TritonClient:
        return cls(settings.triton_url, settings.max_message_bytes, settings.triton_timeout_s,
                   settings.triton_tls_ca, settings.triton_tls_cert, settings.triton_tls_key)

    async def close(self) -> None:
        await self._client.close()

    def _timeout(self, remaining_s: float | None) -> float:
        if remaining_s is None:
            return self.default_timeout_s
        if remaining_s <= 0:
            raise DeadlineExceeded("deadline exceeded before the inference call")
        return min(remaining_s, self.default_timeout_s)

    async def _infer(self, request: tuple[str, list[InferInput]], remaining_s: float | None) -> InferResult:
        model, inputs = request
        timeout = self._timeout(remaining_s)
        try:
            return await asyncio.wait_for(self._client.infer(model, inputs, client_timeout=timeout), timeout + 1.0)
        except TimeoutError:
            raise DeadlineExceeded(f"Triton did not answer within {timeout:.1f}s") from None
        except InferenceServerException as exc:
            raise map_error(exc, self.url) from None

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None) -> Objects:
        return objects_from(await self._infer(detect_request(image), remaining_s))

    async def embed_region(self, image: bytes, region: tuple[float, float, float, float] | None,
                           remaining_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embedding (1xD) and the clipped box (1x4) of ``region``; None = the whole image."""
        return region_from(await self._infer(region_request(image, region), remaining_s))

    async def probe(self) -> None:
        """A real small inference: a model can report ready while its stub is dead."""
        await self.embed_region(PROBE_IMAGE, None, remaining_s=min(10.0, self.default_timeout_s))

    async def model_versions(self) -> ModelVersions:
        return model_versions_from(await self._infer((MODEL_INFO, []), min(10.0, self.default_timeout_s)))
