"""Real photos that ship in packages (scikit-image CC0, scikit-learn CC-BY) and re-shots of them.

Used by the tests, the quick-start demo catalog and the evaluation set. A *re-shot* imitates
a shopper photographing a catalog object again: crop around it, rescale, rotate, re-light,
blur, recompress, and paste it onto another photo as background.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class Photo:
    name: str
    pixels: np.ndarray  # HxWx3 uint8 RGB
    licence: str
    # hand-labelled main object (x1, y1, x2, y2 px) and its COCO label, where there is one
    box: tuple[int, int, int, int] | None = None
    label: str | None = None


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8)


def load_photos() -> dict[str, Photo]:
    from skimage import data
    from sklearn.datasets import load_sample_images

    left, right, _ = data.stereo_motorcycle()
    china, flower = load_sample_images().images
    cc0 = "CC0 (scikit-image)"
    photos = [
        Photo("coffee", _rgb(data.coffee()), cc0, (170, 15, 425, 315), "cup"),
        Photo("motorcycle_left", _rgb(left), cc0, (95, 75, 690, 455), "motorcycle"),
        Photo("motorcycle_right", _rgb(right), cc0, (55, 75, 630, 455), "motorcycle"),
        Photo("astronaut", _rgb(data.astronaut()), cc0, (0, 10, 370, 512), "person"),
        Photo("cat", _rgb(data.chelsea()), cc0, (0, 0, 445, 300), "cat"),
        Photo("rocket", _rgb(data.rocket()), cc0),
        Photo("china", _rgb(china), "CC-BY (scikit-learn sample image)"),
        Photo("flower", _rgb(flower), "CC-BY (scikit-learn sample image)"),
    ]
    return {p.name: p for p in photos}


def box_iou(a, b) -> float:  # noqa: ANN001 - two x1, y1, x2, y2 sequences
    """Intersection over union of two boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def encode(pixels: np.ndarray, fmt: str = "JPEG", quality: int = 92, orientation: int = 1) -> bytes:
    """Encoded bytes (JPEG, PNG, WEBP, HEIF or AVIF). ``orientation`` != 1 stores the pixels
    turned the other way with that EXIF orientation, as a phone does, so a viewer that honours
    it shows ``pixels`` upright."""
    if fmt == "HEIF":
        import pillow_heif

        pillow_heif.register_heif_opener()
    img = Image.fromarray(pixels)
    options: dict = {"quality": quality} if fmt in ("JPEG", "WEBP", "HEIF", "AVIF") else {}
    if orientation != 1:
        img = img.transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
                             3: Image.Transpose.ROTATE_180}[orientation])
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def reshoot(photo: Photo, background: np.ndarray, seed: int, object_fraction: float = 0.55) -> np.ndarray:
    """A re-shot of ``photo``'s object: cropped with a margin, rescaled, rotated, re-lit,
    blurred and pasted onto ``background``; recompression is left to ``encode``."""
    return reshoot_with_box(photo, background, seed, object_fraction)[0]


def reshoot_with_box(photo: Photo, background: np.ndarray, seed: int, object_fraction: float = 0.55,
                     strength: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``reshoot`` plus where the object landed (x1, y1, x2, y2) in the new photo.

    Transformations (seeded), at strength 1: crop margin 0-8 %, rotation +-8 degrees,
    brightness 0.75-1.25, contrast 0.8-1.2, Gaussian blur sigma 0-1.2, object scaled to
    ~47-60 % of the background's shorter fitting side, pasted at a random position. A higher
    ``strength`` widens the rotation, lighting and blur ranges by that factor and shrinks the
    object by it."""
    if photo.box is None:
        raise ValueError(f"{photo.name} has no labelled object to re-shoot")
    rng = np.random.default_rng(seed)
    h, w = photo.pixels.shape[:2]
    x1, y1, x2, y2 = photo.box
    margin = rng.uniform(0.0, 0.08)
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    crop = Image.fromarray(photo.pixels).crop((max(0, x1 - mx), max(0, y1 - my), min(w, x2 + mx), min(h, y2 + my)))
    k = strength
    crop = crop.rotate(float(rng.uniform(-8 * k, 8 * k)), resample=Image.Resampling.BILINEAR, expand=True,
                       fillcolor=tuple(int(v) for v in background.reshape(-1, 3).mean(0)))
    crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(1 - 0.25 * k, 1 + 0.25 * k)))
    crop = ImageEnhance.Contrast(crop).enhance(float(rng.uniform(1 - 0.2 * k, 1 + 0.2 * k)))
    crop = crop.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.2 * k))))
    canvas = Image.fromarray(background).copy()
    bw, bh = canvas.size
    scale = object_fraction / k * min(bw / crop.width, bh / crop.height) * float(rng.uniform(0.85, 1.1))
    crop = crop.resize((max(8, int(crop.width * scale)), max(8, int(crop.height * scale))), Image.Resampling.BILINEAR)
    left = int(rng.uniform(0, max(1, bw - crop.width)))
    top = int(rng.uniform(0, max(1, bh - crop.height)))
    canvas.paste(crop, (left, top))
    return np.asarray(canvas), (left, top, left + crop.width, top + crop.height)


def distractor_sources() -> dict[str, np.ndarray]:
    """Photos that ship with scikit-image and show none of the demo catalog's objects, for
    distractor catalog items (grey ones as RGB)."""
    from skimage import data

    names = ["hubble_deep_field", "immunohistochemistry", "retina", "colorwheel", "logo", "camera", "moon",
             "grass", "gravel", "brick", "page", "text", "cell"]
    return {name: _rgb(getattr(data, name)()) for name in names}


def side_by_side(a: np.ndarray, b: np.ndarray, height: int = 480) -> np.ndarray:
    """Two photos next to each other at one height (a shopper photo with two objects)."""
    parts = []
    for pixels in (a, b):
        img = Image.fromarray(pixels)
        parts.append(img.resize((int(img.width * height / img.height), height), Image.Resampling.BILINEAR))
    canvas = Image.new("RGB", (parts[0].width + parts[1].width, height))
    canvas.paste(parts[0], (0, 0))
    canvas.paste(parts[1], (parts[0].width, 0))
    return np.asarray(canvas)
