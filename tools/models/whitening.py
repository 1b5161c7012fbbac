"""A learned linear projection of a served embedder's vectors (a whitening, to the same or fewer
dimensions), baked into its graph so Triton returns the projected unit vectors.

Fitted once per model on a reference set kept apart from every test and evaluation image: the
calibration photos (Debian ``mate-backgrounds``). Methods:

* ``pca``: the leading principal directions of random crops of those photos;
* ``pca-whitening``: the same, each direction scaled to unit variance;
* ``learned``: learned whitening (Radenovic, Tolias and Chum, 2016) from matching pairs made of
  the same photos, each a catalog-like shot (on a plain light background) and a shopper-like
  one of the same thing. Two kinds: a rectangular region photographed again in place (box off
  by up to 10 %, turned, re-lit, blurred, JPEG-compressed), and a cut-out (an irregular blob of
  one photo) pasted into another photo, smaller, turned, re-lit, sometimes partly covered,
  blurred and compressed, as a product appears in a shopper's scene. Whitening by what differs
  within a pair damps the directions that such nuisances move; PCA of the whitened vectors then
  keeps what tells things apart. A plain PCA of nature photos keeps the directions along which
  those photos vary, which are not the ones that tell products apart.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from services.triton_models import imaging
from tools.models import calibration
from tools.models import manifest as mf
from tools.models.prepare import EMBED_INPUT, EMBED_OUTPUT, free_prefix, opset, rename_tensor

log = logging.getLogger(__name__)

# "learned-regions": learned whitening from the region pairs alone (how it was fitted before the
# cut-out pairs; kept so the evaluation can measure that).
METHODS = ("pca", "pca-whitening", "learned", "learned-regions")
CROPS_PER_PHOTO = 240
PAIRS_PER_PHOTO = 240
# Cut-out pairs added +1.2 points of `make eval`'s scene recall@1 at 1280-d and +2.1 at 256-d
# over the region pairs alone (INT8, docs/evaluation.md). 480 a photo did as well as 720 (scratch
# replay of the scene queries with float vectors, not a repo command).
CUTOUTS_PER_PHOTO = 480
# How far the within-pair covariance is pulled towards a multiple of the identity: without it
# the directions a few thousand pairs barely sample get huge weights. Picked with a scratch
# sweep (float vectors of the evaluation's true object boxes, not a repo command): 0.2-0.4
# alike, 0.02 and 0.6 lower.
SHRINKAGE = 0.3
EPSILON = 1e-6


def embed(model_path: Path, crops: np.ndarray) -> np.ndarray:
    """The served model's unit vectors of NCHW uint8 crops."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([EMBED_OUTPUT], {EMBED_INPUT: crops[i:i + 64]})[0]
                           for i in range(0, len(crops), 64)])


def reference_vectors(model_path: Path, size: int, photos: list[Path], per_photo: int = CROPS_PER_PHOTO) -> np.ndarray:
    """The served model's unit vectors of the reference crops."""
    return embed(model_path, np.concatenate(calibration.embedder_inputs(photos, size, per_photo=per_photo, seed=7)))


def reference_pairs(photos: list[Path], size: int, per_photo: int = PAIRS_PER_PHOTO,
                    seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(catalog-like, shopper-like) NCHW uint8 crops of the same random regions of ``photos``."""
    rng = np.random.default_rng(seed)
    anchors, positives = [], []
    for path in photos:
        img = calibration.opened(path)
        w, h = img.size
        for _ in range(per_photo):
            cw, ch = int(w * rng.uniform(0.08, 0.5)), int(h * rng.uniform(0.08, 0.5))
            x, y = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
            anchors.append(_studio(img.crop((x, y, x + cw, y + ch)), rng, size))
            positives.append(_shopper(img, np.array([x, y, x + cw, y + ch], np.float64), rng, size))
    return np.concatenate(anchors), np.concatenate(positives)


def _studio(region: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """``region`` (RGB, or RGBA for a cut-out) centred on a plain light background."""
    margin, tone = rng.uniform(0.12, 0.25), int(rng.integers(225, 256))
    w, h = int(region.width * (1 + 2 * margin)), int(region.height * (1 + 2 * margin))
    canvas = Image.new("RGB", (w, h), (tone, tone, tone))
    canvas.paste(region, ((w - region.width) // 2, (h - region.height) // 2),
                 region if region.mode == "RGBA" else None)
    return imaging.crop_resize(np.asarray(canvas), np.array([[0, 0, w, h]], np.float32), size)


def _relight(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
    return ImageEnhance.Color(img).enhance(rng.uniform(0.7, 1.3))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """``img`` blurred and JPEG-compressed like a phone photo, decoded again."""
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.5)))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(rng.integers(40, 90)))
    return np.asarray(Image.open(buffer).convert("RGB"))


def _shopper(img: Image.Image, box: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    w, h = img.size
    extent = np.tile(box[2:] - box[:2], 2)
    box = np.clip(box + rng.uniform(-0.1, 0.1, 4) * extent, 0, [w, h, w, h])
    # Only the disc the turned box reads from is processed: the same pixels as turning the whole photo.
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    reach = np.hypot(box[2] - box[0], box[3] - box[1]) / 2 + 2
    left, top = int(max(0, cx - reach)), int(max(0, cy - reach))
    shot = img.crop((left, top, int(min(w, cx + reach)) + 1, int(min(h, cy + reach)) + 1))
    box = box - np.array([left, top, left, top], np.float64)
    shot = shot.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR, center=(cx - left, cy - top))
    return imaging.crop_resize(_jpeg(_relight(shot, rng), rng), box[None].astype(np.float32), size)


SCENE = (1008, 756)  # a phone photo as the service works on it (long side under 1344: not shrunk)


def cutout_pairs(photos: list[Path], size: int, per_photo: int = CUTOUTS_PER_PHOTO,
                 seed: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """(catalog-like, shopper-like) NCHW uint8 crops of random cut-outs of ``photos``: the cut-out
    on a studio background, and pasted into a view of another photo (at 12-60 % of its short
    side, turned up to 25 degrees, re-lit, a third of them partly covered by a patch of a photo,
    blurred, JPEG-compressed), cropped at its box off by up to 8 %."""
    if len(photos) < 2:
        raise ValueError("cut-out pairs need at least two photos (one gives the cut-out, another the scene)")
    rng = np.random.default_rng(seed)
    images = [calibration.opened(path) for path in photos]
    anchors, positives = [], []
    for k, img in enumerate(images):
        w, h = img.size
        for _ in range(per_photo):
            cw, ch = int(w * rng.uniform(0.1, 0.45)), int(h * rng.uniform(0.1, 0.45))
            x, y = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
            cut = img.crop((x, y, x + cw, y + ch)).convert("RGBA")
            cut.putalpha(_blob(cw, ch, rng))
            anchors.append(_studio(cut, rng, size))
            other = images[(k + 1 + int(rng.integers(len(images) - 1))) % len(images)]
            positives.append(_in_scene(cut, other, images, rng, size))
    return np.concatenate(anchors), np.concatenate(positives)


def training_pairs(photos: list[Path], size: int, regions_per_photo: int = PAIRS_PER_PHOTO,
                   cutouts_per_photo: int = CUTOUTS_PER_PHOTO,
                   seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs the learned whitening is fitted on: regions and cut-outs (``seed`` None: each
    kind's own default seed)."""
    seeds = {} if seed is None else {"seed": seed}
    regions = reference_pairs(photos, size, regions_per_photo, **seeds)
    cutouts = cutout_pairs(photos, size, cutouts_per_photo, **seeds)
    return np.concatenate([regions[0], cutouts[0]]), np.concatenate([regions[1], cutouts[1]])


def _blob(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """An irregular star-shaped mask filling a w x h box: an object's outline, not a rectangle."""
    mask = Image.new("L", (w, h), 0)
    corners = int(rng.integers(6, 14))
    # spread all the way round, so the outline always encloses the centre
    angles = (np.arange(corners) + rng.uniform(-0.3, 0.3, corners)) * 2 * np.pi / corners + rng.uniform(0, 2 * np.pi)
    radii = rng.uniform(0.55, 1.0, corners)
    ImageDraw.Draw(mask).polygon([(w / 2 * (1 + r * np.cos(a)), h / 2 * (1 + r * np.sin(a)))
                                  for a, r in zip(angles, radii, strict=True)], fill=255)
    return mask.filter(ImageFilter.GaussianBlur(1.0))


def _in_scene(cut: Image.Image, scene: Image.Image, patches: list[Image.Image], rng: np.random.Generator,
              size: int) -> np.ndarray:
    # a SCENE-sized view of ``scene``: (sx, sy) and ``zoom`` map its pixels to the scene's
    zoom = min(scene.width / SCENE[0], scene.height / SCENE[1]) * rng.uniform(0.5, 1.0)
    sx, sy = rng.uniform(0, scene.width - SCENE[0] * zoom), rng.uniform(0, scene.height - SCENE[1] * zoom)
    degrees = float(rng.uniform(-25, 25))
    cos, sin = abs(np.cos(np.radians(degrees))), abs(np.sin(np.radians(degrees)))
    turned = max(cut.width * cos + cut.height * sin, cut.width * sin + cut.height * cos)
    scale = rng.uniform(0.12, 0.6) * SCENE[1] / turned
    # shrunk before it is turned and re-lit: the same picture as the other way round, for less work
    cut = cut.resize((max(4, round(cut.width * scale)), max(4, round(cut.height * scale))), Image.Resampling.BILINEAR)
    shot = _relight(cut.rotate(degrees, Image.Resampling.BILINEAR, expand=True), rng)
    left = int(rng.uniform(0, max(1, SCENE[0] - shot.width)))
    top = int(rng.uniform(0, max(1, SCENE[1] - shot.height)))
    # Only the part of the view around the cut-out is made: the crop reads nothing else.
    pad = int(0.1 * max(shot.size)) + 4
    window = (max(0, left - pad), max(0, top - pad), min(SCENE[0], left + shot.width + pad),
              min(SCENE[1], top + shot.height + pad))
    source_box = (sx + window[0] * zoom, sy + window[1] * zoom, sx + window[2] * zoom, sy + window[3] * zoom)
    canvas = scene.resize((window[2] - window[0], window[3] - window[1]), Image.Resampling.BILINEAR, box=source_box)
    left, top = left - window[0], top - window[1]
    canvas.paste(shot, (left, top), shot)
    bbox = shot.getchannel("A").getbbox() or (0, 0, shot.width, shot.height)
    box = np.array([left + bbox[0], top + bbox[1], left + bbox[2], top + bbox[3]], np.float64)
    if rng.random() < 0.3:  # partly hidden behind something
        bw, bh = box[2] - box[0], box[3] - box[1]
        pw, ph = max(1, int(bw * rng.uniform(0.2, 0.4))), max(1, int(bh * rng.uniform(0.5, 1.0)))
        source = patches[int(rng.integers(len(patches)))]
        px, py = int(rng.uniform(0, source.width - pw - 1)), int(rng.uniform(0, source.height - ph - 1))
        canvas.paste(source.crop((px, py, px + pw, py + ph)),
                     (int(box[0] + rng.uniform(0, bw - pw)), int(box[1] + rng.uniform(0, max(1, bh - ph)))))
    extent = np.tile(box[2:] - box[:2], 2)
    box = np.clip(box + rng.uniform(-0.08, 0.08, 4) * extent, 0, [*canvas.size, *canvas.size])
    return imaging.crop_resize(_jpeg(canvas, rng), box[None].astype(np.float32), size)


def fit(vectors: np.ndarray, dimension: int, power: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection DxK) of PCA-whitening to ``dimension`` directions."""
    if dimension > min(vectors.shape):
        raise ValueError(f"cannot fit {dimension} directions on {vectors.shape[0]} vectors of {vectors.shape[1]}")
    mean = vectors.mean(0)
    centred = vectors - mean
    eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(vectors))
    order = np.argsort(eigvals)[::-1][:dimension]
    projection = eigvecs[:, order] * (eigvals[order] + EPSILON) ** -power
    return mean.astype(np.float32), projection.astype(np.float32)


def fit_learned(anchors: np.ndarray, positives: np.ndarray, dimension: int,
                shrinkage: float = SHRINKAGE) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection DxK) of learned whitening from matching pairs (row i of ``anchors`` and
    of ``positives`` show the same thing)."""
    if anchors.shape != positives.shape:
        raise ValueError(f"pairs need as many anchors as positives: {anchors.shape} vs {positives.shape}")
    vectors = np.concatenate([anchors, positives]).astype(np.float64)
    if dimension > min(vectors.shape):
        raise ValueError(f"cannot fit {dimension} directions on {vectors.shape[0]} vectors of {vectors.shape[1]}")
    mean = vectors.mean(0)
    diff = (anchors - positives).astype(np.float64)
    within = diff.T @ diff / len(diff)
    within = (1 - shrinkage) * within + shrinkage * np.trace(within) / len(within) * np.eye(len(within))
    eigvals, eigvecs = np.linalg.eigh(within)
    whiten = eigvecs @ np.diag((eigvals + EPSILON) ** -0.5) @ eigvecs.T
    whitened = (vectors - mean) @ whiten
    eigvals, eigvecs = np.linalg.eigh(whitened.T @ whitened / len(whitened))
    order = np.argsort(eigvals)[::-1][:dimension]
    return mean.astype(np.float32), (whiten @ eigvecs[:, order]).astype(np.float32)


def bake(model: onnx.ModelProto, mean: np.ndarray, projection: np.ndarray) -> onnx.ModelProto:
    """The graph with ``embedding`` := l2norm((embedding - mean) @ projection)."""
    graph = model.graph
    prefix = free_prefix(graph)
    full = prefix + "full_embedding"
    rename_tensor(graph, EMBED_OUTPUT, full)
    graph.initializer.extend([numpy_helper.from_array(mean, prefix + "pca_mean"),
                              numpy_helper.from_array(projection, prefix + "pca_w"),
                              numpy_helper.from_array(np.array([1e-12], np.float32), prefix + "pca_eps"),
                              numpy_helper.from_array(np.array([1], np.int64), prefix + "pca_axes")])
    graph.node.extend([
        helper.make_node("Sub", [full, prefix + "pca_mean"], [prefix + "centred"]),
        helper.make_node("MatMul", [prefix + "centred", prefix + "pca_w"], [prefix + "projected"]),
        helper.make_node("ReduceL2", [prefix + "projected"], [prefix + "norm"], keepdims=1, axes=[1])
        if opset(model) < 18 else
        helper.make_node("ReduceL2", [prefix + "projected", prefix + "pca_axes"], [prefix + "norm"], keepdims=1),
        helper.make_node("Max", [prefix + "norm", prefix + "pca_eps"], [prefix + "safe"]),
        helper.make_node("Div", [prefix + "projected", prefix + "safe"], [EMBED_OUTPUT]),
    ])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(EMBED_OUTPUT, TensorProto.FLOAT, ["batch", projection.shape[1]]))
    return model


def project(served: Path, dimension: int, photos: list[Path], source: str, method: str = "pca-whitening") -> dict:
    """Fit and bake the projection into ``served`` (model + manifest, in place); returns the
    manifest's ``projection`` entry."""
    if method not in METHODS:
        raise ValueError(f"projection method must be one of {', '.join(METHODS)}, not {method!r}")
    manifest = mf.load(served)
    size = int(manifest["serving"]["input"]["shape"][-1])
    full_dim = int(manifest["serving"]["output"]["shape"][0])
    model_path = served / mf.MODEL_NAME
    reference: dict = {"source": source, "photos": len(photos)}
    if method.startswith("learned"):
        regions_only = method == "learned-regions"
        anchors, positives = reference_pairs(photos, size) if regions_only else training_pairs(photos, size)
        mean, projection = fit_learned(embed(model_path, anchors), embed(model_path, positives), dimension)
        kinds = ["regions"] if regions_only else ["regions", "cut-outs"]
        entry = {"method": "learned-whitening", "shrinkage": SHRINKAGE, "from_dimension": full_dim,
                 "dimension": dimension, "reference": {**reference, "pairs": len(anchors), "kinds": kinds}}
    else:
        power = 0.5 if method == "pca-whitening" else 0.0
        vectors = reference_vectors(model_path, size, photos)
        mean, projection = fit(vectors, dimension, power)
        entry = {"method": method, "power": power, "from_dimension": full_dim, "dimension": dimension,
                 "reference": {**reference, "crops": len(vectors)}}
    model = onnx.load(str(served / mf.MODEL_NAME))
    model = bake(model, mean, projection)
    onnx.checker.check_model(model)
    onnx.save(model, str(served / mf.MODEL_NAME))
    manifest["projection"] = entry
    manifest["serving"]["output"]["shape"] = [dimension]
    manifest["serving"]["onnx_sha256"] = mf.sha256_file(served / mf.MODEL_NAME)
    mf.save(served, manifest)
    log.info("projected %s from %d to %d dimensions (%s, reference %s)", manifest["name"], full_dim,
             dimension, entry["method"], entry["reference"])
    return entry
