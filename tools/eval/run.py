"""``make eval``: search quality through the real service, per query kind and per variant.

For each variant: a copy of the Triton repository with that variant's embedder and settings,
the real stack (tritonserver, the search service, Milvus Lite), the catalog imported with
``services.importer``, every query sent as ``SearchByImage``. Writes ``docs/evaluation.md``
and a JSON file of every figure.

Two rankings per query:
* **object**: the group of the object the shopper photographed (the detected box that best
  overlaps where the object is, IoU >= 0.5; else the whole-photo group, what a shopper sees
  when their object was not detected; re-shots, whose object fills the photo, use the list);
* **list**: the response's one merged list of products.

    python -m tools.eval.run [--products N] [--variants a,b] [--out docs/evaluation.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np

from services.api import message_size_options, pb, pb_grpc
from services.paths import BUILD, ROOT
from tools.bench.common import machine
from tools.cache import default_cache
from tools.eval import dataset
from tools.eval.matching import matching_box
from tools.models import build
from tools.models import manifest as mf
from tools.models.repository import copy_variant
from tools.stack.local_stack import local_stack

log = logging.getLogger("tools.eval.run")

TOP_K = 10


@dataclass(frozen=True)
class Variant:
    name: str
    embedder: str = build.DEFAULT_EMBEDDER
    pooling: str | None = None  # None = the built-in's shipped choice
    dimension: int | None = None  # None = the shipped choice; 0 = the model's full dimension
    projection: str | None = None  # projection method, whitening.METHODS (None = the shipped choice)
    whole_image: bool = True  # catalog whole-image rows + the whole query photo searched
    int8: bool = True  # the CPU configs serve the INT8 files where their prefer_int8 says so
    float_embedder: bool = False  # the embedder's float file even where INT8 is preferred
    detector_size: int | None = None  # the detector's input side (None = the shipped one)
    postprocess: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, str] = field(default_factory=dict)  # the search service's settings (VS_*)
    description: str = ""


RESNET = "resnet50-opennsfw"
# The postprocess settings before the whole image became the mean of 4 views and the detector
# threshold went from 0.01 (at most 16 objects) to 0.002 (at most 28): the variants measured
# then are pinned to them.
ONE_VIEW = {"score_threshold": "0.01", "max_objects": "16", "whole_image_views": "1"}
# Detection as it was before the evaluation (YOLO score >= 0.25, NMS per class).
BEFORE = {**ONE_VIEW, "score_threshold": "0.25", "class_agnostic_nms": "0"}
LOW = {**ONE_VIEW, "score_threshold": "0.05", "class_agnostic_nms": "1"}

# Every variant but `shipped*` states its settings, so its figures stay comparable when the
# shipped choices change. Model comparisons run in float (the CPU configs told not to use
# INT8 files); INT8, what CPU pods serve, is compared on the shipped default.
VARIANTS = {v.name: v for v in [
    Variant("baseline", embedder=RESNET, pooling="avg", dimension=0, whole_image=False, int8=False, postprocess=BEFORE,
            description="before: ResNet-50 average pooling, 1024-d, objects only (VS_STORE_WHOLE_IMAGE=false, "
                        "skip_whole_image), detection score >= 0.25 with NMS per class"),
    Variant("whole", embedder=RESNET, pooling="avg", dimension=0, int8=False, postprocess=BEFORE,
            description="baseline + the whole image on both sides"),
    Variant("gem", embedder=RESNET, pooling="gem", dimension=0, int8=False, postprocess=BEFORE,
            description="whole + GeM pooling (p=3)"),
    Variant("gem-256", embedder=RESNET, pooling="gem", dimension=256, projection="pca-whitening", int8=False,
            postprocess=BEFORE,
            description="gem + 256-d PCA-whitening (power 0.5, fitted on mate-backgrounds crops)"),
    Variant("gem-256-pca", embedder=RESNET, pooling="gem", dimension=256, projection="pca", int8=False,
            postprocess=BEFORE,
            description="gem + 256-d PCA projection without whitening (power 0)"),
    Variant("efficientnet", embedder="efficientnet-lite0", pooling="avg", dimension=0, int8=False, postprocess=BEFORE,
            description="EfficientNet-Lite0, average pooling, 1280-d, whole image"),
    Variant("efficientnet-gem", embedder="efficientnet-lite0", pooling="gem", dimension=0, int8=False,
            postprocess=BEFORE, description="EfficientNet-Lite0, GeM pooling (p=3), 1280-d, whole image"),
    Variant("efficientnet-gem-256", embedder="efficientnet-lite0", pooling="gem", dimension=256, projection="pca",
            int8=False, postprocess=BEFORE, description="EfficientNet-Lite0, GeM, 256-d PCA projection (power 0)"),
    Variant("efficientnet-256", embedder="efficientnet-lite0", pooling="avg", dimension=256, projection="pca",
            int8=False, postprocess=BEFORE, description="EfficientNet-Lite0, average pooling, 256-d PCA projection"),
    Variant("sscd", embedder="sscd", int8=False, postprocess=BEFORE,
            description="SSCD as published (int8 weights), 512-d, whole image; opt-in"),
    Variant("agnostic-nms", embedder=RESNET, pooling="gem", dimension=0, int8=False,
            postprocess={**BEFORE, "class_agnostic_nms": "1"},
            description="gem + class-agnostic NMS"),
    Variant("low-threshold", embedder=RESNET, pooling="gem", dimension=0, int8=False, postprocess=LOW,
            description="gem + class-agnostic NMS + detection score >= 0.05"),
    Variant("low-threshold-min-area", embedder=RESNET, pooling="gem", dimension=0, int8=False,
            postprocess={**LOW, "min_box_fraction": "0.01"},
            description="low-threshold + no boxes under 1 % of the photo"),
    Variant("low-threshold-no-full-boxes", embedder=RESNET, pooling="gem", dimension=0, int8=False,
            postprocess={**LOW, "max_box_fraction": "0.8"},
            description="low-threshold + no boxes over 80 % of the photo (the whole photo is searched anyway)"),
    Variant("shipped-float", int8=False,
            description="the shipped default (models and model_repository/ settings), detector and embedder float"),
    Variant("shipped", description="the shipped default as CPU pods serve it (model_repository/ as is: INT8 "
                                   "detector and embedder)"),
    Variant("shipped-best-class", postprocess={"rank_by_class_sum": "0"},
            description="shipped with boxes ranked by their best class's score (the default before 2026-12-07 "
                        "17:00 UTC), not by the sum of their class scores"),
    Variant("shipped-listed-0.05", service_env={"VS_LISTED_DETECTION_SCORE": "0.05"},
            description="shipped with only detections from 0.05 merged into the product list (the default before "
                        "2026-11-28 11:00 UTC, when VS_CONFIDENT_DETECTION_SCORE set both)"),
    Variant("shipped-listed-every", service_env={"VS_LISTED_DETECTION_SCORE": "0"},
            description="shipped with every detection merged into the product list"),
    Variant("shipped-one-view", postprocess={"whole_image_views": "1"}, dimension=1280, projection="learned-regions",
            description="shipped-learned-regions with the whole image embedded as one view (no mean of views)"),
    Variant("shipped-0.01", postprocess={"score_threshold": "0.01", "max_objects": "16"}, dimension=1280,
            projection="learned-regions",
            description="shipped-learned-regions with detection score >= 0.01 and at most 16 objects"),
    Variant("shipped-1280", dimension=0, postprocess=ONE_VIEW,
            description="shipped with the embedder's raw 1280-d features (no whitening: the default before "
                        "learned whitening), INT8"),
    Variant("shipped-1280-float", dimension=0, int8=False, postprocess=ONE_VIEW,
            description="shipped-1280, detector and embedder float"),
    Variant("shipped-256-learned", dimension=256, projection="learned",
            description="shipped with a 256-d learned whitening (fitted on matching pairs, regions and cut-outs, "
                        "made of mate-backgrounds photos; tools/models/whitening.py)"),
    Variant("shipped-512-learned", dimension=512, projection="learned",
            description="shipped-256-learned at 512 dimensions (the capacity plan's middle point)"),
    Variant("shipped-768-learned", dimension=768, projection="learned",
            description="shipped-256-learned at 768 dimensions"),
    Variant("shipped-hnsw-sq", service_env={"VS_INDEX_TYPE": "HNSW_SQ"},
            description="shipped with its 1280-d vectors stored 8-bit scalar-quantised (HNSW_SQ, what Milvus 2.5 "
                        "adds; Milvus Lite's FAISS IndexHNSWSQ here, similarities from the quantised vectors)"),
    Variant("shipped-detector-640", detector_size=640,
            description="shipped with the detector exported at 640x640 (YOLO-World's training size) instead of "
                        "672x672 (0.91x the pixels)"),
    Variant("shipped-detector-576", detector_size=576,
            description="shipped with the detector exported at 576x576 instead of 672x672 (0.73x the pixels)"),
    Variant("shipped-detector-480", detector_size=480,
            description="shipped with the detector exported at 480x480 instead of 672x672 (0.51x the pixels)"),
    Variant("shipped-256-learned-float", dimension=256, projection="learned", int8=False,
            description="shipped-256-learned, detector and embedder float (as GPU pods serve it)"),
    Variant("shipped-learned-regions", dimension=1280, projection="learned-regions",
            description="shipped with the whitening fitted on region pairs only (no cut-out pairs): the default "
                        "before 2026-11-28 08:00 UTC"),
    Variant("shipped-1280-learned", dimension=1280, projection="learned-regions", postprocess=ONE_VIEW,
            description="learned whitening (region pairs) at the full 1280 dimensions with detection score "
                        ">= 0.01 (at most 16 objects) and the whole image as one view: the default before "
                        "2026-11-28 03:00 UTC"),
    Variant("shipped-1280-learned-float", dimension=1280, projection="learned-regions", int8=False,
            postprocess=ONE_VIEW,
            description="shipped-1280-learned, detector and embedder float"),
    Variant("shipped-256-pca", dimension=256, projection="pca", postprocess=ONE_VIEW,
            description="shipped with a plain 256-d PCA projection of random mate-backgrounds crops"),
    Variant("int8-detector-only", float_embedder=True, dimension=0, postprocess=ONE_VIEW,
            description="shipped-1280 with the float embedder (INT8 detector only)"),
    Variant("threshold-0.05", postprocess={**ONE_VIEW, "score_threshold": "0.05"}, dimension=0,
            description="shipped-1280 with detection score >= 0.05 (the setting before VS_CONFIDENT_DETECTION_SCORE)"),
    Variant("threshold-0.005", postprocess={**ONE_VIEW, "score_threshold": "0.005"}, dimension=0,
            description="shipped-1280 with detection score >= 0.005"),
    Variant("crop-margin-0.1", postprocess={**ONE_VIEW, "crop_margin": "0.1"}, dimension=0,
            description="shipped-1280 with object crops widened by 10 % of the box on each side"),
    Variant("crop-margin-0.2", postprocess={**ONE_VIEW, "crop_margin": "0.2"}, dimension=0,
            description="shipped-1280 with object crops widened by 20 % of the box on each side"),
    Variant("all-detections-listed", dimension=0, postprocess=ONE_VIEW,
            service_env={"VS_CONFIDENT_DETECTION_SCORE": "0", "VS_LISTED_DETECTION_SCORE": "0"},
            description="shipped-1280, every detection stored for catalog images and merged into the product list"),
]}
# Until 2026-11-28 11:00 UTC the product list merged only detections from 0.05 (the catalog's
# VS_CONFIDENT_DETECTION_SCORE); the variants measured then are pinned to it. The projected
# variants price a compression against `shipped` (the capacity plan's quality cost), so they
# list as it does: pinned until 2026-12-07, they charged the projections for the older list rule
# too (-4.7 points at 256-d instead of the projection's own cost).
LISTED_BEFORE = {"VS_LISTED_DETECTION_SCORE": "0.05"}
RELISTED = ("shipped", "shipped-float", "shipped-best-class", "shipped-listed-every", "shipped-256-learned",
            "shipped-512-learned", "shipped-768-learned", "shipped-256-learned-float", "shipped-hnsw-sq",
            "shipped-detector-640", "shipped-detector-576", "shipped-detector-480")
VARIANTS = {name: v if name in RELISTED else replace(v, service_env={**LISTED_BEFORE, **v.service_env})
            for name, v in VARIANTS.items()}
DEFAULT_VARIANTS = list(VARIANTS)


@dataclass
class Answer:
    query: dataset.Query
    object_ranking: list[tuple[str, float]]
    list_ranking: list[tuple[str, float]]
    nothing_detected: bool
    object_found: bool  # a detected box matched the object (scene queries)
    seconds: float
    query_vectors: int  # rows searched: the objects, and the whole photo unless skipped
    groups: list[dict]  # every searched row's group: label, score, whole, tentative, box, matches (for replays)

    @property
    def shown_groups(self) -> int:
        """Groups a default request gets back (the tentative ones only on request)."""
        return sum(not g["tentative"] for g in self.groups) or len(self.groups)


def embedder_for(variant: Variant, cache: Path) -> Path:
    return build.builtin_model(variant.embedder, cache, pooling=variant.pooling, dimension=variant.dimension,
                               projection=variant.projection)


def _ranking(matches) -> list[tuple[str, float]]:  # noqa: ANN001 - repeated visualsearch.v1.Match
    return [(m.product_id, float(m.similarity)) for m in matches]


def _object_group(response: pb.SearchByImageResponse, box: tuple[int, ...] | None):  # noqa: ANN202
    groups = list(response.objects)
    detected = [g for g in groups if not g.whole_image]
    best = matching_box([(g.box.x_min, g.box.y_min, g.box.x_max, g.box.y_max) for g in detected], box)
    if best is not None:
        return detected[best], True
    whole = [g for g in groups if g.whole_image]
    return (whole[0] if whole else None), False


async def run_queries(address: str, queries: list[dataset.Query], folder: Path, whole_image: bool,
                      concurrency: int = 2, min_detection_score: float = 0.0) -> list[Answer]:
    answers: list[Answer] = []
    pending = list(queries)
    async with grpc.aio.insecure_channel(address, options=message_size_options(64 << 20)) as channel:
        stub = pb_grpc.VisualSearchStub(channel)

        async def worker() -> None:
            while pending:
                query = pending.pop(0)
                # every searched row's group, tentative ones flagged: object recall is what the
                # search found; the groups a default response shows are counted from the flags
                request = pb.SearchByImageRequest(image=(folder / query.path).read_bytes(), top_k=TOP_K,
                                                  skip_whole_image=not whole_image,
                                                  min_detection_score=min_detection_score,
                                                  include_tentative_objects=True)
                start = time.perf_counter()
                response = await stub.SearchByImage(request, timeout=120)
                seconds = time.perf_counter() - start
                group, found = _object_group(response, query.box)
                if query.box is None:  # the object fills the photo: the list is what the shopper sees
                    group = None
                object_ranking = _ranking(group.matches) if group is not None else _ranking(response.products)
                groups = [{"label": g.label, "score": round(float(g.detection_score), 5), "whole": g.whole_image,
                           "tentative": g.tentative,
                           "box": [round(v, 1) for v in (g.box.x_min, g.box.y_min, g.box.x_max, g.box.y_max)],
                           "matches": [[pid, round(sim, 5)] for pid, sim in _ranking(g.matches)]}
                          for g in response.objects]
                answers.append(Answer(query, object_ranking, _ranking(response.products),
                                      response.whole_image_searched, found, seconds, len(response.objects), groups))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def import_catalog(address: str, manifest: Path) -> tuple[float, int]:
    """Import with the real importer; returns its seconds and the vectors it stored."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "services.importer", "--address", address, "--manifest",
                           str(manifest), "--no-progress"], check=True, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    log.info("%s", done.stdout.strip())
    found = re.search(r"(\d+) vectors", done.stdout)
    return seconds, int(found.group(1)) if found else 0


def rank_of(ranking: list[tuple[str, float]], product: str) -> int | None:
    ids = [pid for pid, _ in ranking]
    return ids.index(product) + 1 if product in ids else None


def scores(answers: list[Answer], which: str) -> dict:
    ranks = [rank_of(getattr(a, f"{which}_ranking"), a.query.product_id) for a in answers]
    n = len(ranks)
    return {"queries": n,
            "recall1": sum(r == 1 for r in ranks) / n if n else 0.0,
            "recall5": sum(r is not None and r <= 5 for r in ranks) / n if n else 0.0,
            "mrr": sum(1 / r for r in ranks if r) / n if n else 0.0}


def recalls(answers: list[Answer]) -> dict:
    """``scores`` of the photographed object's group and of the merged list."""
    return {"object": scores(answers, "object"), "list": scores(answers, "list")}


def similarity_gap(answers: list[Answer]) -> dict:
    """Similarity of true rank-1 matches against the best wrong product (object rankings), and
    the ``min_similarity`` that keeps 95 % of the true rank-1 matches (with the share of wrong
    rank-1 answers it would remove)."""
    ranked = [a for a in answers if a.object_ranking]
    true = [a.object_ranking[0][1] for a in ranked if a.object_ranking[0][0] == a.query.product_id]
    wrong_top = [next((s for pid, s in a.object_ranking if pid != a.query.product_id), None) for a in ranked]
    wrong_top = [s for s in wrong_top if s is not None]
    wrong_rank1 = [a.object_ranking[0][1] for a in ranked if a.object_ranking[0][0] != a.query.product_id]
    if not true or not wrong_top:
        return {}
    threshold = float(np.percentile(true, 5))
    return {"true_match_median": float(np.median(true)), "best_wrong_median": float(np.median(wrong_top)),
            "recommended_min_similarity": round(threshold, 2),
            "wrong_rank1_removed": float(np.mean([s < threshold for s in wrong_rank1])) if wrong_rank1 else 0.0}


def evaluate(variant: Variant, evalset: dataset.EvalSet, work: Path, cache: Path) -> dict:
    served = embedder_for(variant, cache)
    if variant.int8:
        build.ensure_int8(served, cache)
    manifest = mf.load(served)
    postprocess = dict(variant.postprocess)
    parameters: dict[str, dict[str, str]] = {"postprocess": postprocess} if postprocess else {}
    if not variant.int8:
        parameters.update({"detector": {"prefer_int8": "0"}, "embedder": {"prefer_int8": "0"}})
    if variant.float_embedder:
        parameters["embedder"] = {"prefer_int8": "0"}
    folder = work / variant.name
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    detector = None
    if variant.detector_size is not None:
        detector = build.builtin_model(build.DEFAULT_DETECTOR, cache, image_size=variant.detector_size)
        if variant.int8:
            build.ensure_int8(detector, cache)
    repository = copy_variant(folder / "repository", embedder=served, detector=detector, parameters=parameters)
    with local_stack(folder, repository=repository,
                     VS_STORE_WHOLE_IMAGE="true" if variant.whole_image else "false", **variant.service_env) as stack:
        import_s, vectors = import_catalog(stack.address, evalset.manifest)
        reimport_s, _ = import_catalog(stack.address, evalset.manifest)  # unchanged: no Triton call
        answers = asyncio.run(run_queries(stack.address, evalset.queries, evalset.folder, variant.whole_image))
    result = {"variant": variant.name, "description": variant.description, "embedder": manifest["name"],
              "dimension": manifest["serving"]["output"]["shape"][0],
              "pooling": manifest.get("pooling", "avg"), "whole_image": variant.whole_image, "int8": variant.int8,
              "postprocess": postprocess, "service_env": variant.service_env, "import_s": import_s,
              "detector_size": mf.load(repository / "detector")["serving"]["input"]["shape"][-1],
              "unchanged_reimport_s": reimport_s, "catalog_vectors": vectors,
              "query_p50_ms": float(np.median([a.seconds for a in answers]) * 1000),
              "query_vectors_mean": float(np.mean([a.query_vectors for a in answers])),
              # what a UI gets by default: groups per response (each a labelled object with its own matches)
              "groups_median": float(np.median([a.shown_groups for a in answers])),
              "groups_max": int(max(a.shown_groups for a in answers)), "kinds": {}}
    for kind in sorted({a.query.kind for a in answers}):
        subset = [a for a in answers if a.query.kind == kind]
        detected = [a for a in subset if a.object_found]
        result["kinds"][kind] = {**recalls(subset),
                                 "object_detected": float(np.mean([a.object_found for a in subset])),
                                 # the embedder's share: recall where the detector found the object
                                 "when_detected": scores(detected, "object"),
                                 "nothing_detected": sum(a.nothing_detected for a in subset)}
        pairs = [a for a in subset if a.query.other_product]
        if pairs:  # a photo of two catalog products: the list can lead with only one of them
            result["kinds"][kind]["two_products"] = {
                "queries": len(pairs), **recalls(pairs),
                "either_first": float(np.mean([bool(a.list_ranking) and a.list_ranking[0][0] in
                                               (a.query.product_id, a.query.other_product) for a in pairs]))}
            result["kinds"][kind]["one_product"] = recalls([a for a in subset if not a.query.other_product])
        if any(a.query.background for a in subset):  # a scene kind: its background's copies apart
            backgrounds = result["kinds"][kind]["backgrounds"] = {}
            for copied, name in dataset.BACKGROUND_PARTS.items():
                part = [a for a in subset if a.query.background_copied == copied]
                backgrounds[name] = {**recalls(part),
                                     "one_product": recalls([a for a in part if not a.query.other_product])}
    blind = [a for a in answers if a.nothing_detected]
    result["nothing_detected"] = {"queries": len(blind), **scores(blind, "object")} if blind else {"queries": 0}
    result["similarity"] = similarity_gap(answers)
    result["answers"] = [{"query": a.query.query_id, "kind": a.query.kind,
                          "object_rank": rank_of(a.object_ranking, a.query.product_id),
                          "list_rank": rank_of(a.list_ranking, a.query.product_id),
                          "top_similarity": a.object_ranking[0][1] if a.object_ranking else None,
                          "object_detected": a.object_found, "nothing_detected": a.nothing_detected,
                          "product": a.query.product_id, "other_product": a.query.other_product,
                          "background": a.query.background, "background_copied": a.query.background_copied,
                          "box": a.query.box, "groups": a.groups}
                         for a in answers]
    log.info("variant %s: %s", variant.name, json.dumps(result["kinds"]))
    return result


def current(data: dict) -> dict:
    """The figures of today's code: the last run that measured the shipped default, its variants only
    (earlier runs measured code that has changed since; docs/history keeps them)."""
    run = next(r for r in reversed(data["runs"]) if "shipped" in r["variants"])
    return {**data, "runs": [run], "results": [r for r in data["results"] if r["variant"] in run["variants"]]}


def write_reports(path: Path, history: Path, data: dict) -> None:
    """``path``: today's figures (docs/evaluation.md); ``history``: every variant ever merged, with
    every run's machine and command (docs/history/evaluation-runs.md)."""
    write_markdown(path, current(data), "Search quality (`make eval`): today's figures",
                   "Every earlier run and variant: docs/history/evaluation-runs.md.")
    write_markdown(history, data, "Every `make eval` run and variant (history)",
                   "Rows measured code that has changed since (the run log says when); today's figures are in "
                   "docs/evaluation.md.")


def write_markdown(path: Path, data: dict, title: str, note: str) -> None:
    lines = [
        f"# {title}",
        "",
        note,
        "",
        *[f"Machine: {run['machine']}. Command: `{run['command']}` ({run['minutes']:.0f} min; "
          f"{', '.join(run['variants'])})." for run in data["runs"]],
        "",
        f"Set (seed {data['set']['seed']}): {data['set']['products']} products with queries, "
        f"{data['set']['distractors']} distractor products, {data['set']['queries']} queries "
        f"({', '.join(f'{k}: {v}' for k, v in data['set']['kinds'].items())}). Objects: {dataset.STAMPS_LICENSE}; "
        f"scenes: {dataset.SCENE_LICENSE}. Built at evaluation time from packages, never committed; "
        "see tools/eval/dataset.py for every transformation.",
        "",
        "**object** = the group of the object the shopper photographed (the detected box with IoU >= 0.5 "
        "against the pasted object, else the whole-photo group); re-shots and second shots, whose "
        "object fills the photo, use the merged list. **list** = the response's merged product list.",
        "",
        "What the scene queries could still gain with the shipped models: docs/evaluation-headroom.md "
        "(`make eval-headroom`).",
        "",
        "| variant | embedder | dim | pooling | whole image | INT8 | kind | R@1 object | R@5 object | "
        "MRR object | R@1 list | R@5 list | MRR list | object detected | R@1 when detected | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        for kind, k in r["kinds"].items():
            o, lst = k["object"], k["list"]
            seen = k.get("when_detected", {})
            detected = f"{seen['recall1']:.3f} ({seen['queries']})" if seen.get("queries") else "-"
            lines.append(
                f"| {r['variant']} | {r['embedder']} | {r['dimension']} | {r['pooling']} | "
                f"{'yes' if r['whole_image'] else 'no'} | {'yes' if r['int8'] else 'no'} | {kind} ({o['queries']}) | "
                f"{o['recall1']:.3f} | {o['recall5']:.3f} | {o['mrr']:.3f} | {lst['recall1']:.3f} | "
                f"{lst['recall5']:.3f} | {lst['mrr']:.3f} | {k['object_detected']:.2f} | {detected} | "
                f"{r['query_p50_ms']:.0f} |")
    pairs = [(r, kind, k) for r in data["results"] for kind, k in r["kinds"].items() if "two_products" in k]
    if pairs:
        lines += ["", "Scene photos of one catalog product, and of two (30 % of the `scene` kind paste a second "
                  "catalog product beside the named one; the list can lead with only one of them, so the named "
                  "product's list R@1 there is capped by chance, and **either first** counts a list led by "
                  "one of the two):", "",
                  "| variant | kind | photos | R@1 object | R@1 list | either first |", "|---|---|---|---|---|---|"]
        for r, kind, k in pairs:
            one, two = k["one_product"], k["two_products"]
            lines.append(f"| {r['variant']} | {kind}, one product | {one['object']['queries']} | "
                         f"{one['object']['recall1']:.3f} | {one['list']['recall1']:.3f} | - |")
            lines.append(f"| {r['variant']} | {kind}, two products | {two['queries']} | "
                         f"{two['object']['recall1']:.3f} | {two['list']['recall1']:.3f} | {two['either_first']:.3f} |")
    parts = [(r, kind, k["backgrounds"]) for r in data["results"] for kind, k in r["kinds"].items()
             if "backgrounds" in k]
    if parts:
        lines += ["", "Scene photos by what the catalog holds of their background: **look-alikes** (the photo was "
                  "pasted into one of the scene photos no look-alike distractor is cut from: the catalog holds "
                  "crops of other photos of the same kind, as it holds tables and posters like a shopper's "
                  "room) or **copies** (crops of the very photo it was pasted into are catalog products):", "",
                  "| variant | kind | background in the catalog | photos | R@1 object | R@1 list | R@5 list | "
                  "MRR list | photos of one product | R@1 object, one product | R@1 list, one product |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r, kind, split in parts:
            for name, part in split.items():
                o, lst, one = part["object"], part["list"], part["one_product"]
                lines.append(f"| {r['variant']} | {kind} | {name} | {o['queries']} | {o['recall1']:.3f} | "
                             f"{lst['recall1']:.3f} | {lst['recall5']:.3f} | {lst['mrr']:.3f} | "
                             f"{one['object']['queries']} | {one['object']['recall1']:.3f} | "
                             f"{one['list']['recall1']:.3f} |")
    lines += ["", "Similarity of the true match at rank 1 against the best wrong product (object rankings), "
              "and the `min_similarity` that keeps 95 % of true rank-1 matches:", "",
              "| variant | true match (median) | best wrong (median) | recommended min_similarity | "
              "wrong rank-1 answers it removes | queries with nothing detected (R@1) | catalog vectors per image | "
              "query vectors per photo | groups per default response (median / max) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        s, nd = r["similarity"], r["nothing_detected"]
        blind = f"{nd['queries']} ({nd['recall1']:.2f})" if nd["queries"] else "0"
        if s:
            per_image = f"{r['catalog_vectors'] / data['set']['catalog_images']:.2f}" \
                if r.get("catalog_vectors") and data["set"].get("catalog_images") else "-"
            searched = f"{r['query_vectors_mean']:.2f}" if "query_vectors_mean" in r else "-"
            groups = f"{r['groups_median']:.0f} / {r['groups_max']}" if "groups_median" in r else "-"
            lines.append(f"| {r['variant']} | {s['true_match_median']:.3f} | {s['best_wrong_median']:.3f} | "
                         f"{s['recommended_min_similarity']:.2f} | {s['wrong_rank1_removed']:.2f} | {blind} | "
                         f"{per_image} | {searched} | {groups} |")
    imports = [r for r in data["results"] if r.get("unchanged_reimport_s")]
    if imports:
        lines += ["", "Importing the catalog with `services.importer` (its defaults), then the same catalog again "
                  "unchanged (incremental sync: no Triton call, the stored rows compared and kept):", "",
                  "| variant | first import s | unchanged re-import s | share of the first |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['import_s']:.1f} | {r['unchanged_reimport_s']:.1f} | "
                  f"{r['unchanged_reimport_s'] / r['import_s']:.1%} |" for r in imports]
    lines += ["", "Variants:", ""] + [f"* `{r['variant']}`: {r['description']}" for r in data["results"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=None, help="a seeded slice of the products (default: all)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--work", type=Path, default=BUILD / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation.md")
    parser.add_argument("--history", type=Path, default=ROOT / "docs" / "history" / "evaluation-runs.md")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "evaluation" / "results.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other variants' results of --json (same set) and replace these")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    started = time.monotonic()
    cache = default_cache()
    evalset = dataset.build(args.work / "set", cache, args.products)
    results = [evaluate(VARIANTS[n], evalset, args.work, cache) for n in names]
    command = "make eval" if argv is None and len(sys.argv) == 1 else \
        "python -m tools.eval.run " + " ".join(sys.argv[1:] if argv is None else argv)
    runs = [{"command": command, "minutes": (time.monotonic() - started) / 60, "machine": machine(),
             "variants": names}]
    if args.merge and args.json.is_file():
        previous = json.loads(args.json.read_text())
        if previous["set"]["queries"] != len(evalset.queries):
            parser.error(f"--merge: {args.json} was made on another set ({previous['set']['queries']} queries)")
        kept = [r for r in previous["results"] if r["variant"] not in names]
        order = list(VARIANTS)
        results = sorted(kept + results, key=lambda r: order.index(r["variant"]) if r["variant"] in order else 99)
        runs = previous["runs"] + runs
    kinds: dict[str, int] = {}
    for q in evalset.queries:
        kinds[q.kind] = kinds.get(q.kind, 0) + 1
    data = {"runs": runs,
            "set": {"seed": 2026, "products": len(evalset.products), "distractors": evalset.distractors,
                    "catalog_images": len(evalset.manifest.read_text().splitlines()),
                    "queries": len(evalset.queries), "kinds": kinds},
            "results": results}
    # per-query ranks stay in the work folder (megabytes); the committed file keeps the figures
    (args.work / "answers.json").write_text(json.dumps({r["variant"]: r.pop("answers", []) for r in results}))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1))
    write_reports(args.out, args.history, data)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
