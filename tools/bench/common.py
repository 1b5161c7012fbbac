"""What the benchmarks (and the evaluation) share: the machine's description, percentiles, a
CPU meter, and vectors that look like served embeddings."""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from services.triton_models import imaging
from tools.models.local_pipeline import LocalPipeline
from tools.sample_photos import distractor_sources, load_photos


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return (f"{cpu}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


@contextmanager
def cpu_meter(pids: list[int], children: bool = True):  # noqa: ANN201 - yields a dict filled on exit
    """CPU used by the given processes (and their children) while the block runs: ``seconds``
    (user + system) and ``cores`` (those over the block's wall time)."""
    def total() -> float:
        seconds = 0.0
        for pid in pids:
            try:
                proc = psutil.Process(pid)
                for p in [proc, *(proc.children(recursive=True) if children else [])]:
                    t = p.cpu_times()
                    seconds += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return seconds

    result: dict[str, float] = {}
    start_cpu, start = total(), time.perf_counter()
    yield result
    wall = time.perf_counter() - start
    result["seconds"] = total() - start_cpu
    result["cores"] = result["seconds"] / wall if wall else 0.0


def pct(values: list[float] | np.ndarray, p: float) -> float:
    return float(np.percentile(np.asarray(values), p)) if len(values) else float("nan")


def clustered_vectors(centers: np.ndarray, n: int, seed: int, noise: float = 0.35) -> np.ndarray:
    """Unit vectors scattered around real embeddings (random vectors flatter HNSW unfairly low)."""
    rng = np.random.default_rng(seed)
    picks = centers[rng.integers(0, len(centers), n)]
    vectors = picks + rng.normal(0, noise / np.sqrt(centers.shape[1]), picks.shape).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def real_centers(count: int, pipeline: LocalPipeline | None = None) -> np.ndarray:
    """Embeddings of random crops of the shipped photos, through the served embedder (or
    ``pipeline``'s)."""
    pipeline = pipeline or LocalPipeline.from_repository()
    rng = np.random.default_rng(0)
    sources = list(distractor_sources().values()) + [p.pixels for p in load_photos().values()]
    crops = []
    for i in range(count):
        pixels = sources[i % len(sources)]
        h, w = pixels.shape[:2]
        cw, ch = int(w * rng.uniform(0.2, 1)), int(h * rng.uniform(0.2, 1))
        x, y = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
        crops.append(imaging.crop_resize(pixels, np.array([[x, y, x + cw, y + ch]], np.float32),
                                            pipeline.crop_size)[0])
    return np.concatenate([pipeline.embed(np.stack(crops[i:i + 32])) for i in range(0, len(crops), 32)])
