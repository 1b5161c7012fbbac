"""Async calls to the Triton ensembles (``tritonclient.grpc.aio``), errors mapped to ours."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from services.models.repository import DETECT_ENSEMBLE, REGION_ENSEMBLE
from services.search.errors import BackendUnavailable, DeadlineExceeded, InvalidInput
from services.triton.launcher import tiny_png

log = logging.getLogger(__name__)

INVALID_IMAGE_MARKER = "invalid image: "


@dataclass
class Objects:
    boxes: np.ndarray  # Kx4 original pixels
    scores: np.ndarray  # K
    labels: list[str]
    embeddings: np.ndarray  # KxD, unit length
    fallback: bool


@dataclass(frozen=True)
class ModelVersions:
    detector: str
    detector_sha256: str
    embedder: str
    embedder_sha256: str
    dimension: int


class InferenceClient:
    def __init__(self, url: str, max_message_bytes: int, default_timeout_s: float) -> None:
        self.url = url
        self.default_timeout_s = default_timeout_s
        # round_robin: with a dns:/// target over a headless Service, each call goes to the
        # next Triton pod instead of pinning one HTTP/2 connection to one pod.
        channel_args = [("grpc.max_send_message_length", max_message_bytes),
                        ("grpc.max_receive_message_length", max_message_bytes),
                        ("grpc.lb_policy_name", "round_robin")]
        self._client = triton_aio.InferenceServerClient(url, channel_args=channel_args)
        self._probe_image = tiny_png()

    async def close(self) -> None:
        await self._client.close()

    def _timeout(self, remaining_s: float | None) -> float:
        if remaining_s is None:
            return self.default_timeout_s
        if remaining_s <= 0:
            raise DeadlineExceeded("deadline exceeded before the inference call")
        return min(remaining_s, self.default_timeout_s)

    async def _infer(self, model: str, inputs: list, outputs: list[str], remaining_s: float | None):
        timeout = self._timeout(remaining_s)
        try:
            result = await asyncio.wait_for(
                self._client.infer(model, inputs, client_timeout=timeout), timeout + 1.0)
        except TimeoutError:
            raise DeadlineExceeded(f"Triton did not answer within {timeout:.1f}s") from None
        except InferenceServerException as exc:
            raise self._map(exc) from None
        return {name: result.as_numpy(name) for name in outputs}

    def _map(self, exc: InferenceServerException) -> Exception:
        status, message = exc.status() or "", exc.message() or str(exc)
        if INVALID_IMAGE_MARKER in message:
            return InvalidInput(message[message.index(INVALID_IMAGE_MARKER):])
        if status == str(grpc.StatusCode.DEADLINE_EXCEEDED) or "Deadline Exceeded" in message:
            return DeadlineExceeded(f"Triton: {message}")
        return BackendUnavailable(f"Triton at {self.url} is unavailable or failing: {message}")

    async def detect_and_embed(self, image: bytes, remaining_s: float | None = None) -> Objects:
        tensor = triton_aio.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        out = await self._infer(DETECT_ENSEMBLE, [tensor],
                                ["BOXES", "SCORES", "LABELS", "EMBEDDINGS", "FALLBACK"], remaining_s)
        return Objects(out["BOXES"], out["SCORES"], [lab.decode() for lab in out["LABELS"]],
                       out["EMBEDDINGS"], bool(out["FALLBACK"][0]))

    async def embed_region(self, image: bytes, region: tuple[float, float, float, float] | None,
                           remaining_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Embedding (1xD) and the clipped box (1x4) of ``region``; None = the whole image."""
        tensor = triton_aio.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
        box = triton_aio.InferInput("REGION", [4], "FP32")
        box.set_data_from_numpy(np.asarray(region or (0, 0, 0, 0), np.float32))
        out = await self._infer(REGION_ENSEMBLE, [tensor, box], ["EMBEDDINGS", "BOXES"], remaining_s)
        return out["EMBEDDINGS"], out["BOXES"]

    async def probe(self) -> None:
        """A real small inference: a model can report ready while its stub is dead."""
        await self.embed_region(self._probe_image, None, remaining_s=min(10.0, self.default_timeout_s))

    async def model_versions(self) -> ModelVersions:
        try:
            det = (await self._client.get_model_config("detector", as_json=True))["config"]
            emb = (await self._client.get_model_config("embedder", as_json=True))["config"]
        except InferenceServerException as exc:
            raise self._map(exc) from None
        params = lambda cfg, key: cfg.get("parameters", {}).get(key, {}).get("string_value", "")  # noqa: E731
        return ModelVersions(params(det, "model_name"), params(det, "onnx_sha256"),
                             params(emb, "model_name"), params(emb, "onnx_sha256"),
                             int(emb["output"][0]["dims"][-1]))
