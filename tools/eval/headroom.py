"""How far the scene queries could go with the shipped models: where the detector's box choice
caps the object's group, and what query- and catalog-side additions would buy, measured in-process.

``make eval`` measures the service as it ships; this asks what is left on the table without new
model weights. It replays both scene kinds (objects pasted anywhere, and centred) with the
in-process pipeline (the same ONNX files, settings and image code as the Triton repository:
``tools.models.local_pipeline``) against the whole evaluation catalog held in numpy (exact cosine
search, a product's score is its best row), and scores each query the way ``make eval``'s object
group does: the detected box that overlaps the object (IoU >= 0.5), else the whole photo.

The first table asks how much of the gap is the detector's box choice. A search sends the 4
boxes the postprocess ranks best (``VS_MAX_SEARCHED_OBJECTS``); the postprocess keeps 8; a wider pool (from
score 0.0005, 64 boxes, one detector run read three ways) shows what a lower threshold would
offer. For each pool: how often it holds the object's box, the object group's recall@1 if that
box were searched whatever its rank in the pool, and how often the object's box or the whole
photo ranks the product first (what the merged list could lead with at best: a product first only
in some other box's group is chance). Rows follow docs/evaluation.md's split by what the catalog
holds of each photo's background (look-alikes or copies: tools/eval/dataset.py).

The second table, on the scenes placed anywhere, starts from the service as shipped (its first
row must reproduce ``make eval``'s object-group figure for that kind) and adds, one at a time
and together:

* catalog side: each of the whole image's views as its own row (the service stores their mean),
  and the object trimmed of its plain studio background, as it is and turned +-20 degrees;
* query side: the searched box's crop mirrored, its embedding averaged with the plain one;
* for objects without a searched box: a grid of square windows of the photo (35 % of its short
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
from dataclasses import dataclass, replace
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


# The pools of boxes a photo's object may be found in, by the detection settings that give them.
WIDE_SCORE = 0.0005
WIDE_BOXES = 64


def pools(detection: imaging.DetectionSettings, searched: int) -> dict[str, imaging.DetectionSettings]:
    """Name -> settings: the boxes a search sends, the boxes the postprocess keeps, a wider pool."""
    return {"searched": detection.at_most(searched), "kept": detection,
            "wide": replace(detection, score_threshold=WIDE_SCORE, max_objects=WIDE_BOXES)}


@dataclass
class SceneQuery:
    product: int
    kind: str  # dataset.Query.kind
    rows: tuple[str, ...]  # the report rows it counts in
    boxes: dict[str, np.ndarray | None]  # pool -> the object's box embedding, None when the pool has none
    mirrored: np.ndarray | None  # the searched box's crop mirrored
    whole: np.ndarray
    windows: np.ndarray | None  # the window grid's embeddings (scenes placed anywhere only)

    @property
    def matched(self) -> bool:
        """Whether a search sends the object's box (the second table's "detected")."""
        return self.boxes["searched"] is not None

    @property
    def box(self) -> np.ndarray | None:
        return self.boxes["searched"]


KIND_NAMES = {"scene": "anywhere", "scene_centred": "centred"}


def report_rows(query: dataset.Query) -> tuple[str, ...]:
    """The first table's rows a scene query counts in (docs/evaluation.md's split of the kinds)."""
    kind = KIND_NAMES[query.kind]
    part = f"{kind}, {dataset.BACKGROUND_PARTS[query.background_copied]}"
    rows = [f"{kind}, all", f"{part}, all"]
    if query.kind == "scene_centred":
        return tuple(rows)
    return (*rows, f"{part}, one product" if query.other_product is None else f"{kind}, two catalog products")


def embed_scenes(pipe: LocalPipeline, evalset: dataset.EvalSet, index: dict[str, int],
                 searched: int) -> list[SceneQuery]:
    out = []
    settings = pools(pipe.settings.detection, searched)
    for query in (q for q in evalset.queries if q.kind in KIND_NAMES):
        decoded = pipe.decode((evalset.folder / query.path).read_bytes())
        raw, geometry = pipe.detector_output(decoded)
        boxes: dict[str, np.ndarray | None] = {}
        embedded: dict[tuple[float, ...], np.ndarray] = {}  # the pools mostly find the same box: embed it once
        mirrored = None
        for pool, detection in settings.items():
            found = imaging.locate(raw, geometry, len(pipe.classes), detection)
            best = matching_box(list(found.boxes[:-1]), query.box)
            if best is None:
                boxes[pool] = None
                continue
            window = found.crop_boxes[best:best + 1]
            crop = imaging.crop_resize(decoded.pixels, window, pipe.crop_size)
            key = tuple(window.reshape(-1).tolist())
            if key not in embedded:
                embedded[key] = _unit(pipe.embed(crop)[0])
            boxes[pool] = embedded[key]
            if pool == "searched":
                mirrored = _unit(pipe.embed(np.ascontiguousarray(crop[:, :, :, ::-1]))[0])
        whole = views.pool_views(pipe.embed(views.whole_image_views(
            decoded.pixels, pipe.crop_size, pipe.settings.detection.whole_image_views)), 1)[-1]
        grid = None
        if query.kind == "scene":
            h, w = decoded.pixels.shape[:2]
            grid = _unit(pipe.embed(imaging.crop_resize(decoded.pixels, windows(w, h), pipe.crop_size)))
        out.append(SceneQuery(index[query.product_id], query.kind, report_rows(query), boxes, mirrored, whole, grid))
    return out


def box_choice(queries: list[SceneQuery], catalog: CatalogRows, products: int) -> dict[str, dict]:
    """The first table: per report row and pool, the share of photos whose object the pool boxes,
    the object group's recall@1 with that box searched, and the share whose object box or whole
    photo ranks the product first."""
    whole_first = [_first(catalog.search(("stored",), q.whole, products), q.product) for q in queries]
    box_first = {pool: [None if q.boxes[pool] is None else
                        _first(catalog.search(("stored",), q.boxes[pool], products), q.product) for q in queries]
                 for pool in next(iter(queries)).boxes}
    table: dict[str, dict] = {}
    for row in sorted({r for q in queries for r in q.rows}, key=_row_order):
        members = [i for i, q in enumerate(queries) if row in q.rows]
        table[row] = {"photos": len(members)}
        for pool, firsts in box_first.items():
            table[row][pool] = {
                "boxed": float(np.mean([firsts[i] is not None for i in members])),
                "group_recall1": float(np.mean([whole_first[i] if firsts[i] is None else firsts[i] for i in members])),
                "box_or_whole_first": float(np.mean([bool(firsts[i]) or whole_first[i] for i in members]))}
    return table


def _rank(scores: np.ndarray, product: int) -> int:
    """The product's rank (1 = first) among the catalog's product scores."""
    return int((scores > scores[product]).sum()) + 1


def _first(scores: np.ndarray, product: int) -> bool:
    return _rank(scores, product) == 1


def _row_order(row: str) -> tuple:
    kind, _, rest = row.partition(", ")
    return (list(KIND_NAMES.values()).index(kind), rest == "all", rest)


# name -> (catalog row kinds, query vectors of a detected object, query vectors of a missed one)
Option = tuple[tuple[str, ...], Callable[[SceneQuery], np.ndarray], Callable[[SceneQuery], np.ndarray]]
PLAIN: Callable[[SceneQuery], np.ndarray] = lambda q: q.box  # noqa: E731
FLIP: Callable[[SceneQuery], np.ndarray] = lambda q: _unit(q.box + q.mirrored)  # noqa: E731
WHOLE: Callable[[SceneQuery], np.ndarray] = lambda q: q.whole[None]  # noqa: E731
WINDOWS: Callable[[SceneQuery], np.ndarray] = lambda q: np.concatenate([q.whole[None], q.windows])  # noqa: E731
OPTIONS: dict[str, Option] = {
    "as shipped (must match make eval's object group)": (("stored",), PLAIN, WHOLE),
    "+ each whole-image view stored as its own row": (("stored", "views"), PLAIN, WHOLE),
    "+ the trimmed object stored, plain and turned +-20 degrees": (("stored", "trimmed"), PLAIN, WHOLE),
    "+ the box's crop mirrored, averaged with it": (("stored",), FLIP, WHOLE),
    "+ windows of the photo searched when the object has no searched box": (("stored",), PLAIN, WINDOWS),
    "all of the above": (("stored", "views", "trimmed"), FLIP, WINDOWS),
}


def score(queries: list[SceneQuery], catalog: CatalogRows, option: Option, products: int) -> dict:
    kinds, detected, missed = option
    ranks = []
    for q in queries:
        scores = catalog.search(kinds, detected(q) if q.matched else missed(q), products)
        ranks.append(_rank(scores, q.product))
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
        f"Models: {data['models']}. In-process replay of `make eval`'s {data['queries']} scene photos "
        f"({data['products']} catalog products, the look-alike distractors included; tools/eval/headroom.py says "
        "how): exact search here, Milvus and the service's top 10 in docs/evaluation.md, so the two agree within "
        "a photo or two.", "",
        "## How much the box choice caps the object's group", "",
        f"A search sends the {data['searched']} boxes the postprocess ranks best; it keeps "
        f"{data['kept']}; the wide pool is every box from score {WIDE_SCORE} after the same NMS, at most "
        f"{WIDE_BOXES}. Boxed: the pool holds a box with IoU >= {MATCH_IOU} with the object. Group R@1: "
        "the object's group (that box searched, whatever its rank in the pool, else the whole photo) ranks the "
        "product first; under searched, that is `make eval`'s object-group figure. Box or whole first: the "
        "object's box or the whole photo ranks it first, the most the merged list could lead with it short of "
        "chance.", "",
        "| scene photos | photos | boxed: searched / kept / wide | group R@1: searched / kept / wide | "
        "box or whole first: searched / kept / wide |",
        "|---|---|---|---|---|",
    ]
    for row, r in data["box_choice"].items():
        cells = [" / ".join(f"{r[pool][field]:.3f}" for pool in ("searched", "kept", "wide"))
                 for field in ("boxed", "group_recall1", "box_or_whole_first")]
        lines.append(f"| {row} | {r['photos']} | {' | '.join(cells)} |")
    lines += ["", "## What additions would buy (scenes placed anywhere)", "",
              "Detected: the object's box is among the searched ones; missed: it is not, and the whole photo "
              "(and in one row the windows) is searched for it.", "",
              "| configuration | scene R@1 | scene R@5 | detected: R@1 | detected: R@5 | missed: R@1 | missed: R@5 |",
              "|---|---|---|---|---|---|---|"]
    for name, r in data["options"].items():
        lines.append(f"| {name} | {r['recall1']:.3f} | {r['recall5']:.3f} | {r['detected_recall1']:.3f} | "
                     f"{r['detected_recall5']:.3f} | {r['missed_recall1']:.3f} | {r['missed_recall5']:.3f} |")
    first = next(iter(data["options"].values()))
    found = first["detected"]
    best_missed = {k: max(r[f"missed_recall{k}"] for r in data["options"].values()) for k in (1, 5)}
    lines += ["", f"A search sends the object's box in {found:.1%} of these photos. Even if every such object were "
              "ranked first, scene recall@k could not exceed that share plus the rest times the best missed "
              f"recall@k above: recall@1 <= {found + (1 - found) * best_missed[1]:.3f}, recall@5 <= "
              f"{found + (1 - found) * best_missed[5]:.3f}."]
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
    settings = Settings.from_env(check_files=False)
    catalog = embed_catalog(pipe, evalset, index, settings.confident_detection_score)
    log.info("catalog embedded: %s rows", {k: len(v[0]) for k, v in catalog.kinds.items()})
    queries = embed_scenes(pipe, evalset, index, settings.max_searched_objects)
    anywhere = [q for q in queries if q.kind == "scene"]
    results = {name: score(anywhere, catalog, option, len(ids)) for name, option in OPTIONS.items()}
    data = {"command": " ".join(["python -m tools.eval.headroom", *(sys.argv[1:] if argv is None else argv)]),
            "minutes": (time.monotonic() - started) / 60, "machine": machine(),
            "models": f"{detector[1]['name']} + {embedder[1]['name']} "
                      f"({embedder[1]['serving']['output']['shape'][0]}-d), {detector[0].name} / {embedder[0].name}",
            "queries": len(queries), "products": len(ids), "searched": settings.max_searched_objects,
            "kept": pipe.settings.detection.max_objects, "box_choice": box_choice(queries, catalog, len(ids)),
            "options": results}
    write_markdown(args.out, data)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
