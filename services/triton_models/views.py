"""The whole-image vector as the mean of a few views of the photo.

A catalog photo is clean: sharp, upright, large. A shopper's photo of the same product is
tilted, small and soft. The mean embedding of the photo as it is, turned a little both ways
and seen at low resolution lies closer to every such shot than the clean photo alone, and
costs one stored vector all the same. Both sides get it (catalog and query whole images go
through the same ensemble), so the two stay comparable. Object crops stay single views: a
query has up to ``max_objects`` of them and each view costs one more embedder run.

Imported by the ``crops`` model's CPU config (which makes the views; its GPU config's graph,
tools/models/crop_graph.py, makes the same), the ``pool_views`` model (which averages their
embeddings) and the in-process pipeline. Needs only numpy and Pillow.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

# In order: the photo, turned 15 degrees each way, then at low resolution. ``whole_image_views``
# takes the first N.
TURN_DEGREES = 15.0
LOW_RESOLUTION = 0.5  # of the embedder's input side: the object as a distant, small shot shows it
MAX_VIEWS = 4
# Bumped whenever the views' pixels change, as no config parameter does then: it is part of the
# pipeline's fingerprint, so a catalog's images are embedded again (query and stored whole-image
# vectors must come from the same views). 2: the turned views in one affine resampling (2026-12-06).
RECIPE = 2


def _shrunk(img: Image.Image, side: int) -> Image.Image:
    """The image with its long side at most ``side``."""
    scale = side / max(img.size)
    if scale >= 1:
        return img
    # reducing_gap: box-filter most of the way first (several times faster on a large photo)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                      Image.Resampling.BILINEAR, reducing_gap=2.0)


def border_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour of an HxWx3 photo's outermost pixels (a studio shot's background)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0)


def turned(img: Image.Image, degrees: float, size: int, fill: tuple[int, ...]) -> Image.Image:
    """The photo turned ``degrees`` counter-clockwise on a canvas grown to hold all of it (as
    ``rotate(expand=True)``), resized to ``size`` x ``size``, in one affine resampling: only the
    output's pixels are computed, not a turned copy at the photo's size and then a resize."""
    rad = math.radians(degrees)
    cos, sin = math.cos(rad), math.sin(rad)
    w, h = img.size
    canvas_w, canvas_h = w * abs(cos) + h * abs(sin), w * abs(sin) + h * abs(cos)
    sx, sy = canvas_w / size, canvas_h / size
    # Output pixel (x, y) -> canvas (x * sx, y * sy) -> offsets from the canvas' centre,
    # turned back onto the photo around its centre.
    matrix = (cos * sx, -sin * sy, w / 2 - cos * canvas_w / 2 + sin * canvas_h / 2,
              sin * sx, cos * sy, h / 2 - sin * canvas_w / 2 - cos * canvas_h / 2)
    return img.transform((size, size), Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR,
                         fillcolor=fill)


def whole_image_views(pixels: np.ndarray, size: int, count: int) -> np.ndarray:
    """``count`` (1..MAX_VIEWS) views of the whole HxWx3 photo, each resized to ``size``;
    NCHW uint8, the first being the plain whole-image crop."""
    if not 1 <= count <= MAX_VIEWS:
        raise ValueError(f"whole-image views must be 1..{MAX_VIEWS}, got {count}")
    img = Image.fromarray(pixels)
    out = np.empty((count, 3, size, size), np.uint8)
    out[0] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), np.uint8).transpose(2, 0, 1)
    if count > 1:
        # The other views are made from a copy at twice the input side.
        work = _shrunk(img, 2 * size)
        # The corners that turning uncovers take the photo's border colour: a studio background
        # stays plain instead of gaining black triangles.
        fill = tuple(int(v) for v in border_colour(np.asarray(work)))
        # Turned from a copy at the input side: sampled 2:1 without a filter, the copy at twice
        # the side gives sharper, aliased views than the rotate-then-resize they replace.
        source = _shrunk(work, size)
        for i, degrees in enumerate((TURN_DEGREES, -TURN_DEGREES)[:count - 1], start=1):
            out[i] = np.asarray(turned(source, degrees, size, fill), np.uint8).transpose(2, 0, 1)
    if count > 3:
        low = _shrunk(work, max(8, round(size * LOW_RESOLUTION)))
        out[3] = np.asarray(low.resize((size, size), Image.Resampling.BILINEAR), np.uint8).transpose(2, 0, 1)
    return out


def pool_views(embeddings: np.ndarray, objects: int) -> np.ndarray:
    """Embeddings of ``objects`` rows (the detected objects, then the whole image) from the
    embedder's rows (the objects, then every view of the whole image): the views' mean,
    L2-normalised, replaces them."""
    if not 1 <= objects <= len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings cannot hold {objects} objects")
    views = embeddings[objects - 1:].astype(np.float32)
    whole = views.mean(axis=0)
    norm = float(np.linalg.norm(whole))
    whole = whole / norm if norm > 0 else whole
    return np.concatenate([embeddings[:objects - 1].astype(np.float32), whole[None]])
