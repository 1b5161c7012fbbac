"""The evaluation set: products and shopper photos built from real photos that ship in packages.

* Products: the real photo cut-outs of Debian's ``tuxpaint-stamps-default`` (GPL-2), one
  product per object, its catalog image the object on a plain studio background. The
  package's drawings (not photos) become distractor products.
* Queries, per product (seeded, reproducible):
  - ``scene``: the object pasted into a real scene photo (Debian ``lomiri-wallpapers-16.04``
    / ``-20.04`` photos, CC-BY / CC-BY-SA; scikit-image photos, CC0) at 15-55 % of the
    scene's short side, anywhere, rotated, in perspective, re-lit, sometimes partly hidden
    and next to a second object, then blurred and JPEG-compressed like a phone photo;
  - ``reshot``: the catalog image photographed again (crop, rotation, perspective,
    lighting, blur, JPEG);
  - ``second_shot``: real second photos of one object (scikit-image's motorcycle stereo
    pair: the catalog holds the left view, the queries are the right one);
  - ``scene_centred``: how shoppers shoot: the object alone, large (45-75 % of the short
    side) and near the centre of a real scene photo, otherwise as ``scene``.
* Look-alike distractors: ``background_distractors`` products cut from half of the scene
  photos (``LOOKALIKE_SOURCES``; a crop each, on no studio background): a real catalog holds
  tables, plants and posters like the backgrounds of shoppers' photos, and every kind is
  searched among them. A scene photo pasted into one of those photos has copies of its own
  background in the catalog (``Query.background_copied``); one pasted into the other half has
  only look-alikes of the same kind, as a shopper's room has in a real catalog. The evaluation
  reports the two apart.
  The new kind and these products draw from their own random stream, so the queries of the
  kinds above stay those of earlier runs.
* Nothing here is committed: packages are fetched into the cache at evaluation time.

The mate-backgrounds photos are not used: they calibrate INT8 and fit the whitening.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from tools import debian
from tools.sample_photos import encode, load_photos

log = logging.getLogger("tools.eval.dataset")

STAMPS_PACKAGE = "tuxpaint-stamps-default"
STAMPS = "usr/share/tuxpaint/stamps"
STAMPS_LICENSE = "GPL-2 (Debian tuxpaint-stamps-default)"
# Real scene photos (the abstract wallpapers of these packages are left out).
SCENE_PACKAGES = {
    "lomiri-wallpapers-16.04": ["Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
                                "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
                                "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi",
                                "greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
                                "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
                                "sunset_by_Aitzol_Berasategi"],
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus"],
}
SCENE_LICENSE = "CC-BY-4.0 / CC-BY-SA-4.0 (Debian lomiri-wallpapers), CC0 (scikit-image)"
SKIMAGE_SCENES = ("coffee", "astronaut", "cat", "rocket", "china", "flower")
# Every other scene photo (7 lomiri and 3 scikit-image ones) is cut into look-alike distractors;
# a query pasted into one of the other 10 meets only look-alikes of its background (since
# 2026-12-07; before, every scene photo was cut, so every scene query's own background had
# copies in the catalog).
LOOKALIKE_SOURCES = slice(0, None, 2)
# how reports name a scene photo by ``Query.background_copied``
BACKGROUND_PARTS = {False: "look-alikes", True: "copies"}

# A stamp is a photo cut-out (not a drawing) when its opaque pixels hold many distinct
# colours: drawings have flat fills.
PHOTO_MIN_COLOURS = 2000
PHOTO_MIN_COLOUR_RATIO = 0.3
MIN_STAMP_SIDE = 48
SECOND_SHOT_PRODUCT = "motorcycle"
SCENE_SIDE = 1024


@dataclass(frozen=True)
class Query:
    query_id: str
    product_id: str
    kind: str  # scene | reshot | second_shot
    path: str  # relative to the set's folder
    box: tuple[int, int, int, int] | None  # where the product's object is, when known
    other_product: str | None = None  # a second catalog product shown in the same photo
    background: str | None = None  # the scene photo it was pasted into (scene kinds)
    background_copied: bool = False  # the look-alike distractors include crops of that photo


@dataclass(frozen=True)
class EvalSet:
    folder: Path
    manifest: Path  # the importer's JSONL manifest of the catalog
    products: list[str]  # products that have queries
    distractors: int
    queries: list[Query]

    @classmethod
    def load(cls, folder: Path) -> EvalSet:
        meta = json.loads((folder / "set.json").read_text())
        queries = [Query(**{**q, "box": tuple(q["box"]) if q["box"] else None}) for q in meta["queries"]]
        return cls(folder, folder / "catalog.jsonl", meta["products"], meta["distractors"], queries)


def _stamp_is_photo(rgba: np.ndarray) -> bool:
    opaque = rgba[..., 3] > 128
    if opaque.sum() < 100:
        return False
    colours = np.unique(rgba[opaque][:, :3].astype(np.int64) @ np.array([65536, 256, 1]))
    return len(colours) >= PHOTO_MIN_COLOURS and len(colours) / opaque.sum() >= PHOTO_MIN_COLOUR_RATIO


def _trim(img: Image.Image) -> Image.Image:
    box = img.getchannel("A").point(lambda a: 255 if a > 16 else 0).getbbox()
    return img.crop(box) if box else img


def _signature(img: Image.Image) -> np.ndarray:
    grey = Image.new("RGBA", img.size, (128, 128, 128, 255))
    grey.alpha_composite(img)
    return np.asarray(grey.convert("L").resize((16, 16), Image.Resampling.BILINEAR), np.float32)


def load_stamps(cache: Path) -> tuple[dict[str, Image.Image], dict[str, Image.Image]]:
    """(photo cut-outs, drawings) by product id, trimmed RGBA; mirrored or repeated stamps
    (tuxpaint ships some objects facing both ways) are kept once."""
    root = debian.fetch(STAMPS_PACKAGE, cache) / STAMPS
    photos: dict[str, Image.Image] = {}
    drawings: dict[str, Image.Image] = {}
    seen: list[np.ndarray] = []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        if rel.parts[0] == "symbols":  # letters and signs, not products
            continue
        img = _trim(Image.open(path).convert("RGBA"))
        if min(img.size) < MIN_STAMP_SIDE // 2:
            continue
        sig = _signature(img)
        if any(min(np.abs(sig - s).mean(), np.abs(sig[:, ::-1] - s).mean()) < 6 for s in seen):
            continue
        seen.append(sig)
        pid = str(rel.with_suffix("")).replace("/", ".")
        is_photo = "cartoon" not in rel.parts and min(img.size) >= MIN_STAMP_SIDE and _stamp_is_photo(np.asarray(img))
        (photos if is_photo else drawings)[pid] = img
    return photos, drawings


@dataclass(frozen=True)
class Scene:
    name: str
    pixels: np.ndarray


def load_scenes(cache: Path) -> list[Scene]:
    scenes = []
    for package, names in SCENE_PACKAGES.items():
        folder = debian.fetch(package, cache) / "usr/share/backgrounds"
        for name in names:
            img = Image.open(folder / f"{name}.jpg").convert("RGB")
            img.thumbnail((2048, 2048))
            scenes.append(Scene(name, np.asarray(img)))
    photos = load_photos()
    scenes += [Scene(name, photos[name].pixels) for name in SKIMAGE_SCENES]
    return scenes


def studio_shot(obj: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The catalog image: the object on a plain light background with a margin."""
    long_side = int(np.clip(max(obj.size), 256, 512))
    scale = long_side / max(obj.size)
    obj = obj.resize((max(1, round(obj.width * scale)), max(1, round(obj.height * scale))), Image.Resampling.LANCZOS)
    margin = rng.uniform(0.12, 0.25)
    w, h = int(obj.width * (1 + 2 * margin)), int(obj.height * (1 + 2 * margin))
    tone = int(rng.integers(225, 256))
    canvas = Image.new("RGBA", (w, h), (tone, tone, int(np.clip(tone - rng.integers(0, 12), 0, 255)), 255))
    canvas.alpha_composite(obj, ((w - obj.width) // 2, (h - obj.height) // 2))
    return canvas.convert("RGB")


def _perspective(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """The image seen from a little to the side: its corners moved by up to ``strength``."""
    w, h = img.size
    jitter = rng.uniform(-strength, strength, 8) * np.array([w, h] * 4)
    corners = np.array([0, 0, w, 0, w, h, 0, h], np.float64) + jitter
    # coefficients mapping output (x, y) to input: solve the 8 equations of the homography
    src = np.array([0, 0, w, 0, w, h, 0, h], np.float64).reshape(4, 2)
    dst = corners.reshape(4, 2) - corners.reshape(4, 2).min(0)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows), np.array(rhs))
    size = tuple(int(s) for s in np.ceil(dst.max(0)))
    return img.transform(size, Image.Transform.PERSPECTIVE, coeffs.tolist(), Image.Resampling.BILINEAR)


def _relight(img: Image.Image, rng: np.random.Generator, k: float = 1.0) -> Image.Image:
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    rgb = img.convert("RGB")
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.uniform(1 - 0.3 * k, 1 + 0.3 * k)))
    rgb = ImageEnhance.Contrast(rgb).enhance(float(rng.uniform(1 - 0.25 * k, 1 + 0.25 * k)))
    rgb = ImageEnhance.Color(rgb).enhance(float(rng.uniform(1 - 0.2 * k, 1 + 0.2 * k)))
    warm = rng.uniform(-0.08 * k, 0.08 * k)  # colour temperature of the light
    arr = np.asarray(rgb, np.float32) * np.array([1 + warm, 1.0, 1 - warm], np.float32)
    rgb = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if alpha is not None:
        rgb.putalpha(alpha)
    return rgb


def _scene_canvas(scene: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A phone-sized random view of a scene photo (landscape or portrait)."""
    img = Image.fromarray(scene)
    portrait = rng.random() < 0.35
    aspect = 3 / 4 if portrait else 4 / 3
    w, h = img.size
    cw = min(w, h * aspect) * rng.uniform(0.55, 1.0)
    ch = cw / aspect
    x, y = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    out = (int(SCENE_SIDE * aspect), SCENE_SIDE) if portrait else (SCENE_SIDE, int(SCENE_SIDE / aspect))
    return img.crop((int(x), int(y), int(x + cw), int(y + ch))).resize(out, Image.Resampling.BILINEAR).convert("RGBA")


def _place(canvas: Image.Image, obj: Image.Image, fraction: float, rng: np.random.Generator,
           centred: bool = False) -> tuple[int, ...]:
    """Paste ``obj`` at ``fraction`` of the canvas' short side, anywhere (or near the centre);
    returns its visible box."""
    scale = fraction * min(canvas.size) / max(obj.size)
    obj = obj.resize((max(8, int(obj.width * scale)), max(8, int(obj.height * scale))), Image.Resampling.BILINEAR)
    if centred:
        jitter = rng.uniform(-0.08, 0.08, 2) * np.array(canvas.size)
        left = int(np.clip((canvas.width - obj.width) / 2 + jitter[0], 0, max(0, canvas.width - obj.width)))
        top = int(np.clip((canvas.height - obj.height) / 2 + jitter[1], 0, max(0, canvas.height - obj.height)))
    else:
        left = int(rng.uniform(0, max(1, canvas.width - obj.width)))
        top = int(rng.uniform(0, max(1, canvas.height - obj.height)))
    canvas.alpha_composite(obj, (left, top))
    visible = np.asarray(obj.getchannel("A")) > 128
    ys, xs = np.nonzero(visible)
    return (left + int(xs.min()), top + int(ys.min()), left + int(xs.max()) + 1, top + int(ys.max()) + 1)


def scene_photo(obj: Image.Image, scenes: list[Scene], other: Image.Image | None,
                rng: np.random.Generator) -> tuple[bytes, tuple[int, ...], str]:
    """The object (RGBA) in a real scene, photographed by a phone; returns JPEG bytes, the
    object's box and the scene photo's name."""
    scene = scenes[int(rng.integers(len(scenes)))]
    canvas = _scene_canvas(scene.pixels, rng)
    if other is not None:  # a second, unrelated object in the same photo
        _place(canvas, _relight(other.rotate(float(rng.uniform(-20, 20)), Image.Resampling.BILINEAR, expand=True),
                                rng), float(rng.uniform(0.15, 0.35)), rng)
    shot = obj.rotate(float(rng.uniform(-25, 25)), Image.Resampling.BILINEAR, expand=True)
    shot = _relight(_perspective(shot, rng, 0.12), rng)
    box = _place(canvas, shot, float(rng.uniform(0.15, 0.55)), rng)
    if rng.random() < 0.3:  # partly hidden behind something from another scene
        x1, y1, x2, y2 = box
        cover_w, cover_h = int((x2 - x1) * rng.uniform(0.2, 0.4)), int((y2 - y1) * rng.uniform(0.5, 1.0))
        patch = _scene_canvas(scenes[int(rng.integers(len(scenes)))].pixels, rng).resize((max(1, cover_w),
                                                                                           max(1, cover_h)))
        canvas.alpha_composite(patch, (x1 if rng.random() < 0.5 else x2 - cover_w, y1))
    photo = canvas.convert("RGB").filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
    return encode(np.asarray(photo), quality=int(rng.integers(40, 91))), box, scene.name


def centred_photo(obj: Image.Image, scenes: list[Scene],
                  rng: np.random.Generator) -> tuple[bytes, tuple[int, ...], str]:
    """The object alone, large and near the centre of a real scene, photographed by a phone."""
    scene = scenes[int(rng.integers(len(scenes)))]
    canvas = _scene_canvas(scene.pixels, rng)
    shot = obj.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR, expand=True)
    shot = _relight(_perspective(shot, rng, 0.08), rng)
    box = _place(canvas, shot, float(rng.uniform(0.45, 0.75)), rng, centred=True)
    photo = canvas.convert("RGB").filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    return encode(np.asarray(photo), quality=int(rng.integers(50, 91))), box, scene.name


def background_crop(scenes: list[Scene], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A catalog image cut from a scene photo (15-60 % of its short side, anywhere), and the
    photo's name."""
    source = scenes[int(rng.integers(len(scenes)))]
    scene = source.pixels
    h, w = scene.shape[:2]
    side = int(min(h, w) * rng.uniform(0.15, 0.6))
    aspect = rng.uniform(0.7, 1.4)
    cw, ch = min(w, int(side * aspect)), min(h, side)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(scene[y:y + ch, x:x + cw])
    img.thumbnail((512, 512))
    return np.asarray(img), source.name


def reshot_photo(catalog: Image.Image, rng: np.random.Generator) -> bytes:
    """The catalog image photographed again: cropped, turned, in perspective, re-lit."""
    w, h = catalog.size
    cut = rng.uniform(0, 0.08, 4) * np.array([w, h, w, h])
    img = catalog.crop((int(cut[0]), int(cut[1]), int(w - cut[2]), int(h - cut[3]))).convert("RGBA")
    img = _perspective(img.rotate(float(rng.uniform(-12, 12)), Image.Resampling.BILINEAR, expand=True), rng, 0.06)
    tone = tuple(int(v) for v in np.asarray(catalog.convert("RGB")).reshape(-1, 3)[0]) + (255,)
    back = Image.new("RGBA", img.size, tone)
    back.alpha_composite(img)
    photo = _relight(back.convert("RGB"), rng, 0.8).filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))
    photo.thumbnail((1024, 1024))
    return encode(np.asarray(photo), quality=int(rng.integers(50, 91)))


def build(out: Path, cache: Path, max_products: int | None = None, seed: int = 2026,
          scene_queries: int = 2, reshot_queries: int = 1, centred_queries: int = 1,
          background_distractors: int = 2000) -> EvalSet:
    """Write the set into ``out`` (catalog images + importer manifest, queries + set.json)."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])  # the newer kind and distractors: their own stream
    photos, drawings = load_stamps(cache)
    scenes = load_scenes(cache)
    names = sorted(photos)
    if max_products is not None:
        names = [names[i] for i in sorted(rng.choice(len(names), max_products, replace=False))]
    distractor_names = sorted(drawings) if max_products is None else sorted(drawings)[: max_products // 2]
    (out / "catalog").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    rows, queries = [], []
    for pid in [*names, *distractor_names]:
        stamp = photos.get(pid) or drawings[pid]
        catalog = studio_shot(stamp, rng)
        (out / "catalog" / f"{pid}.jpg").write_bytes(encode(np.asarray(catalog), quality=92))
        rows.append({"product_id": pid, "image_path": f"catalog/{pid}.jpg", "image_id": "studio",
                     "category": pid.split(".")[0], "title": pid.rsplit(".", 1)[-1]})
        if pid not in photos:
            continue
        for q in range(scene_queries):
            other = names[int(rng.integers(len(names)))] if rng.random() < 0.3 else None
            other = other if other != pid else None
            data, box, scene = scene_photo(stamp, scenes, photos[other] if other else None, rng)
            queries.append(_save(out, f"{pid}.scene{q}", pid, "scene", data, box, other, scene))
        for q in range(reshot_queries):
            queries.append(_save(out, f"{pid}.reshot{q}", pid, "reshot", reshot_photo(catalog, rng), None))
    rows, queries = _second_shots(out, rows, queries, rng)
    for pid in names:
        for q in range(centred_queries):
            data, box, scene = centred_photo(photos[pid], scenes, extra)
            queries.append(_save(out, f"{pid}.centred{q}", pid, "scene_centred", data, box, background=scene))
    sources: dict[str, str] = {}  # each look-alike distractor's scene photo
    cut = scenes[LOOKALIKE_SOURCES]
    copied = {scene.name for scene in cut}
    queries = [replace(q, background_copied=q.background in copied) for q in queries]
    for i in range(background_distractors):
        pid = f"background.{i:05d}"
        pixels, sources[pid] = background_crop(cut, extra)
        (out / "catalog" / f"{pid}.jpg").write_bytes(encode(pixels, quality=90))
        rows.append({"product_id": pid, "image_path": f"catalog/{pid}.jpg", "image_id": "photo",
                     "category": "background", "title": pid})
    (out / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    products = [*names, SECOND_SHOT_PRODUCT]
    (out / "set.json").write_text(json.dumps({
        "seed": seed, "products": products, "distractors": len(distractor_names) + background_distractors,
        "background_distractors": background_distractors, "background_sources": sources,
        "sources": {"objects": STAMPS_LICENSE, "scenes": SCENE_LICENSE},
        "queries": [asdict(q) for q in queries]}, indent=1))
    log.info("evaluation set: %d products with queries, %d distractors (%d cut from scene photos), %d queries in %s",
             len(products), len(distractor_names) + background_distractors, background_distractors, len(queries),
             out)
    return EvalSet.load(out)


def _second_shots(out: Path, rows: list[dict], queries: list[Query],
                  rng: np.random.Generator) -> tuple[list[dict], list[Query]]:
    photos = load_photos()
    left, right = photos["motorcycle_left"], photos["motorcycle_right"]
    (out / "catalog" / f"{SECOND_SHOT_PRODUCT}.jpg").write_bytes(encode(left.pixels, quality=92))
    rows.append({"product_id": SECOND_SHOT_PRODUCT, "image_path": f"catalog/{SECOND_SHOT_PRODUCT}.jpg",
                 "image_id": "left", "category": "vehicles", "title": "motorcycle"})
    queries.append(_save(out, f"{SECOND_SHOT_PRODUCT}.right", SECOND_SHOT_PRODUCT, "second_shot",
                         encode(right.pixels, quality=90), right.box))
    for q in range(4):  # the second view, photographed again
        data = reshot_photo(Image.fromarray(right.pixels), rng)
        queries.append(_save(out, f"{SECOND_SHOT_PRODUCT}.right{q}", SECOND_SHOT_PRODUCT, "second_shot", data, None))
    return rows, queries


def _save(out: Path, qid: str, pid: str, kind: str, data: bytes, box: tuple[int, ...] | None,
          other_product: str | None = None, background: str | None = None) -> Query:
    path = f"queries/{qid}.jpg"
    (out / path).write_bytes(data)
    return Query(qid, pid, kind, path, tuple(int(v) for v in box) if box else None, other_product, background)
