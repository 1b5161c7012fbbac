"""CPU ms per photo of the crops model's two ways: Pillow (the CPU config) and the crop graph
(the GPU config's ONNX file) run by ONNX Runtime on this machine's CPU, one thread each.

Why the CPU config keeps Pillow, and what the graph would cost a GPU pod that ran it on its
CPUs. On the GPU the graph runs on ONNX Runtime's CUDA provider (not measured here).

    python -m tools.bench.crops [--photos 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from services.triton_models import imaging
from tools.bench.common import machine
from tools.bench.pipeline import query_images
from tools.models import crop_graph, repository
from tools.models import manifest as mf
from tools.models.local_pipeline import LocalPipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=24, help="make bench's query photos")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    pipeline = LocalPipeline.from_repository(threads=1)
    graph = crop_graph.CropGraph(repository.REPOSITORY / repository.CROPS / "1" / mf.MODEL_NAME, threads=1)
    views = pipeline.settings.detection.whole_image_views
    decoded = [pipeline.decode(data) for data in query_images(args.photos)]
    work = [(d.pixels, pipeline.locate(d)) for d in decoded]
    timings: dict[str, list[float]] = {"pillow": [], "graph": []}
    diffs = []
    for _ in range(args.rounds):
        for pixels, found in work:
            t0 = time.perf_counter()
            pillow = imaging.crops_of(pixels, found.crop_boxes, pipeline.crop_size, views)
            t1 = time.perf_counter()
            graphed = graph.crops(pixels, found.crop_boxes, views)
            t2 = time.perf_counter()
            timings["pillow"].append((t1 - t0) * 1000)
            timings["graph"].append((t2 - t1) * 1000)
            diffs.append(float(np.abs(graphed.astype(np.int16) - pillow).mean()))
    crops = statistics.mean(len(found.crop_boxes) + views for _, found in work)
    pixels = statistics.mean(p.shape[0] * p.shape[1] for p, _ in work) / 1e6
    print(f"machine: {machine()}")
    print(f"{len(work)} photos x {args.rounds} rounds, {pixels:.2f} MP working pictures, {crops:.1f} crops each")
    print("| crops made by | CPU ms / photo (p50) | mean |")
    print("|---|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {statistics.median(values):.1f} | {statistics.mean(values):.1f} |")
    ratio = statistics.median(timings["graph"]) / statistics.median(timings["pillow"])
    print(f"graph / Pillow: {ratio:.2f}x; mean absolute difference {statistics.mean(diffs):.2f} grey levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
