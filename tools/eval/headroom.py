"""How far the scene queries could go with the shipped models: what detection and embedding each
cost, and what query- and catalog-side additions would buy, measured in-process.

``make eval`` measures the service as it ships; this asks what is left on the table without new
model weights. It replays the scene queries with the in-process pipeline (the same ONNX files,
settings and image code as the Triton repository: ``tools.models.local_pipeline``) against a
catalog held in numpy (exact cosine search, a product's score is its best row), and scores each
query the way ``make eval``'s object ranking does: the detected box that overlaps the object
(IoU >= 0.5), else the whole photo. Its first row must reproduce ``make eval``'s shipped scene
figures; the others add, one at a time and together:

* catalog side: each of the whole image's views as its own row (the service stores their mean),
  and the object trimmed of its plain studio background, as it is and turned +-20 degrees;
* query side: the matched box's crop mirrored, its embedding averaged with the plain one;
* for objects the detector missed: a grid of square windows of the photo (35 % of its short
  side, half-overlapping), searched with the whole photo.

    python -m tools.eval.headroom [--products N] [--float] [--out docs/evaluation-headroom.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from services.paths import BUILD, ROOT
from services.search.config import Settings
from services.triton_models import imaging, views
from tools.bench.common import machine
from tools.cache import default_cache
from tools.eval import dataset
from tools.eval.matching import MATCH_IOU, matching_box
from tools.models.local_pipeline import LocalPipeline
from tools.models.repository import CPU_CONFIG, REPOSITORY, PipelineSettings, installed

log = logging.getLogger("tools.eval.headroom")

# A pixel belongs to the object when a channel differs from the studio background by more than this.
BACKGROUND_TOLERANCE = 24
TRIM_TURNS = (20.0, -20.0)
WINDOW_SIDE = 0.35  # of the photo's short side
WINDOW_STRIDE = 0.5  # of the window's side


def trimmed_box(pixels: np.ndarray) -> np.ndarray | None:
    """The xyxy box of what differs from the photo's border colour (a studio shot's object), or
    None when nearly nothing does."""
    background = views.border_colour(pixels)
    ys, xs = np.nonzero(np.abs(pixels.astype(np.int16) - background).max(axis=2) > BACKGROUND_TOLERANCE)
    if len(xs) < 16:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def windows(width: int, height: int, side: float = WINDOW_SIDE, stride: float = WINDOW_STRIDE) -> np.ndarray:
    """Square xyxy windows of ``side`` times the short side, ``stride`` of a window apart, covering
    the photo edge to edge."""
    size = side * min(width, height)
    starts = [np.linspace(0, extent - size, int(np.ceil((extent - size) / (size * stride))) + 1)
              for extent in (width, height)]
    return np.array([[x, y, x + size, y + size] for y in starts[1] for x in starts[0]], np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@dataclass
class CatalogRows:
    """Vectors and their product index, by kind of row."""

    kinds: dict[str, tuple[np.ndarray, np.ndarray]]

    def search(self, kinds: tuple[str, ...], queries: np.ndarray, products: int) -> np.ndarray:
        """Per product, its best cosine over ``kinds`` rows and the query vectors."""
        vectors = np.concatenate([self.kinds[k][0] for k in kinds])
        owners = np.concatenate([self.kinds[k][1] for k in kinds])
        best = (np.atleast_2d(queries) @ vectors.T).max(axis=0)
        out = np.full(products, -np.inf, np.float32)
        np.maximum.at(out, owners, best)
        return out


def embed_catalog(pipe: LocalPipeline, evalset: dataset.EvalSet, index: dict[str, int],
                  confident: float) -> CatalogRows:
    rows: dict[str, tuple[list, list]] = {k: ([], []) for k in ("stored", "views", "trimmed")}

    def add(kind: str, vectors: np.ndarray, product: int) -> None:
        rows[kind][0].extend(vectors)
        rows[kind][1].extend([product] * len(vectors))

    for line in evalset.manifest.read_text().splitlines():
        item = json.loads(line)
        data = (evalset.folder / item["image_path"]).read_bytes()
        product = index[item["product_id"]]
        decoded = pipe.decode(data)
        found = pipe.detect(decoded)
        crops_embedded = pipe.embed(found.crops)
        stored = views.pool_views(crops_embedded, len(found.boxes))
        # what the service stores: the whole image and the confident objects
        keep = [i for i in range(len(found.boxes)) if i == len(found.boxes) - 1 or found.scores[i] >= confident]
        add("stored", stored[keep], product)
        add("views", _unit(crops_embedded[len(found.boxes) - 1:]), product)
        pixels = decoded.pixels
        box = trimmed_box(pixels)
        if box is not None:
            fill = tuple(int(v) for v in views.border_colour(pixels))
            obj = Image.fromarray(pixels).crop(tuple(int(v) for v in box))
            shots = [obj, *(obj.rotate(d, Image.Resampling.BILINEAR, expand=True, fillcolor=fill) for d in TRIM_TURNS)]
            crops = np.stack([np.asarray(o.resize((pipe.crop_size,) * 2, Image.Resampling.BILINEAR)).transpose(2, 0, 1)
                              for o in shots])
            add("trimmed", _unit(pipe.embed(crops)), product)
    return CatalogRows({k: (np.asarray(v, np.float32), np.asarray(p, np.int64)) for k, (v, p) in rows.items()})


@dataclass
class SceneQuery:
    product: int
    matched: bool
    box: np.ndarray | None  # the matched box's embedding
    mirrored: np.ndarray | None  # its crop mirrored
    whole: np.ndarray
    windows: np.ndarray


def embed_scenes(pipe: LocalPipeline, evalset: dataset.EvalSet, index: dict[str, int]) -> list[SceneQuery]:
    out = []
    for query in (q for q in evalset.queries if q.kind == "scene"):
        decoded = pipe.decode((evalset.folder / query.path).read_bytes())
        found = pipe.detect(decoded)
        embedded = pipe.embed_found(found)
        best = matching_box(list(found.boxes[:-1]), query.box)
        matched = best is not None
        box = mirrored = None
        if matched:
            box = embedded[best]
            mirrored = _unit(pipe.embed(np.ascontiguousarray(found.crops[best:best + 1, :, :, ::-1]))[0])
        h, w = decoded.pixels.shape[:2]
        grid = imaging.crop_resize(decoded.pixels, windows(w, h), pipe.crop_size)
        out.append(SceneQuery(index[query.product_id], matched, box, mirrored, embedded[-1], _unit(pipe.embed(grid))))
    return out


# name -> (catalog row kinds, query vectors of a detected object, query vectors of a missed one)
Option = tuple[tuple[str, ...], Callable[[SceneQuery], np.ndarray], Callable[[SceneQuery], np.ndarray]]
PLAIN: Callable[[SceneQuery], np.ndarray] = lambda q: q.box  # noqa: E731
FLIP: Callable[[SceneQuery], np.ndarray] = lambda q: _unit(q.box + q.mirrored)  # noqa: E731
WHOLE: Callable[[SceneQuery], np.ndarray] = lambda q: q.whole[None]  # noqa: E731
WINDOWS: Callable[[SceneQuery], np.ndarray] = lambda q: np.concatenate([q.whole[None], q.windows])  # noqa: E731
OPTIONS: dict[str, Option] = {
    "as shipped (must match make eval's shipped row)": (("stored",), PLAIN, WHOLE),
    "+ each whole-image view stored as its own row": (("stored", "views"), PLAIN, WHOLE),
    "+ the trimmed object stored, plain and turned +-20 degrees": (("stored", "trimmed"), PLAIN, WHOLE),
    "+ the box's crop mirrored, averaged with it": (("stored",), FLIP, WHOLE),
    "+ windows of the photo searched when the object was missed": (("stored",), PLAIN, WINDOWS),
    "all of the above": (("stored", "views", "trimmed"), FLIP, WINDOWS),
}


def score(queries: list[SceneQuery], catalog: CatalogRows, option: Option, products: int) -> dict:
    kinds, detected, missed = option
    ranks = []
    for q in queries:
        scores = catalog.search(kinds, detected(q) if q.matched else missed(q), products)
        ranks.append(int((scores > scores[q.product]).sum()) + 1)
    ranks_arr = np.array(ranks)
    matched = np.array([q.matched for q in queries])

    def recall(mask: np.ndarray, k: int) -> float:
        return float((ranks_arr[mask] <= k).mean()) if mask.any() else 0.0

    everything = np.ones(len(ranks_arr), bool)
    return {"recall1": recall(everything, 1), "recall5": recall(everything, 5),
            "detected_recall1": recall(matched, 1), "detected_recall5": recall(matched, 5),
            "missed_recall1": recall(~matched, 1), "missed_recall5": recall(~matched, 5),
            "detected": float(matched.mean())}


def write_markdown(path: Path, data: dict) -> None:
    lines = [
        "# Scene queries: headroom with the shipped models", "",
        f"Command: `{data['command']}`; {data['minutes']:.0f} minutes on {data['machine']}. "
        f"Models: {data['models']}. In-process replay of `make eval`'s {data['queries']} scene queries "
        f"({data['products']} catalog products; tools/eval/headroom.py says how). The first row replays the "
        "service as shipped and should match docs/evaluation.md's `shipped` scene row within a query or two (exact "
        "search here, Milvus and the service's top 10 there); each other row adds one thing to it.", "",
        "| configuration | scene R@1 | scene R@5 | detected: R@1 | detected: R@5 | missed: R@1 | missed: R@5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in data["options"].items():
        lines.append(f"| {name} | {r['recall1']:.3f} | {r['recall5']:.3f} | {r['detected_recall1']:.3f} | "
                     f"{r['detected_recall5']:.3f} | {r['missed_recall1']:.3f} | {r['missed_recall5']:.3f} |")
    first = next(iter(data["options"].values()))
    found = first["detected"]
    best_missed = {k: max(r[f"missed_recall{k}"] for r in data["options"].values()) for k in (1, 5)}
    lines += ["", f"The detector finds {found:.1%} of the objects (a box with IoU >= {MATCH_IOU}). Even if every "
              "object it finds were ranked first, scene recall@k could not exceed that share plus the missed share "
              "times the best missed recall@k above: recall@1 <= "
              f"{found + (1 - found) * best_missed[1]:.3f}, recall@5 <= {found + (1 - found) * best_missed[5]:.3f}."]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=None, help="a seeded slice of the products (default: all)")
    parser.add_argument("--float", action="store_true", help="the float files (as GPU pods serve them), not INT8")
    parser.add_argument("--work", type=Path, default=BUILD / "eval")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "evaluation-headroom.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    started = time.monotonic()
    evalset = dataset.build(args.work / "set", default_cache(), args.products)
    variant = "gpu" if args.float else CPU_CONFIG
    detector, embedder = installed("detector", REPOSITORY, variant), installed("embedder", REPOSITORY, variant)
    pipe = LocalPipeline(detector, embedder, PipelineSettings.from_repository())
    ids = sorted({json.loads(line)["product_id"] for line in evalset.manifest.read_text().splitlines()})
    index = {pid: i for i, pid in enumerate(ids)}
    confident = Settings.from_env(check_files=False).confident_detection_score
    catalog = embed_catalog(pipe, evalset, index, confident)
    log.info("catalog embedded: %s rows", {k: len(v[0]) for k, v in catalog.kinds.items()})
    queries = embed_scenes(pipe, evalset, index)
    results = {name: score(queries, catalog, option, len(ids)) for name, option in OPTIONS.items()}
    data = {"command": " ".join(["python -m tools.eval.headroom", *(sys.argv[1:] if argv is None else argv)]),
            "minutes": (time.monotonic() - started) / 60, "machine": machine(),
            "models": f"{detector[1]['name']} + {embedder[1]['name']} "
                      f"({embedder[1]['serving']['output']['shape'][0]}-d), {detector[0].name} / {embedder[0].name}",
            "queries": len(queries), "products": len(ids), "options": results}
    write_markdown(args.out, data)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
