"""The whole-image vector as the mean of a few views of the photo.

A catalog photo is clean: sharp, upright, large. A shopper's photo of the same product is
tilted, small and soft. The mean embedding of the photo as it is, turned a little both ways
and seen at low resolution lies closer to every such shot than the clean photo alone, and
costs one stored vector all the same. Both sides get it (catalog and query whole images go
through the same ensemble), so the two stay comparable. Object crops stay single views: a
query has up to ``max_objects`` of them and each view costs one more embedder run.

Imported by the ``postprocess`` model (which makes the views), the ``pool_views`` model
(which averages their embeddings) and the in-process pipeline. Needs only numpy and Pillow.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# In order: the photo, turned 15 degrees each way, then at low resolution. ``whole_image_views``
# takes the first N.
TURN_DEGREES = 15.0
LOW_RESOLUTION = 0.5  # of the embedder's input side: the object as a distant, small shot shows it
MAX_VIEWS = 4


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


def whole_image_views(pixels: np.ndarray, size: int, count: int) -> np.ndarray:
    """``count`` (1..MAX_VIEWS) views of the whole HxWx3 photo, each resized to ``size``;
    NCHW uint8, the first being the plain whole-image crop."""
    if not 1 <= count <= MAX_VIEWS:
        raise ValueError(f"whole-image views must be 1..{MAX_VIEWS}, got {count}")
    img = Image.fromarray(pixels)
    views = [img]
    if count > 1:
        # The other views are made from a copy at twice the input side: turning a 12 MP photo
        # costs tens of milliseconds, and the view is shrunk to ``size`` anyway.
        work = _shrunk(img, 2 * size)
        # The corners that turning uncovers take the photo's border colour: a studio background
        # stays plain instead of gaining black triangles.
        fill = tuple(int(v) for v in border_colour(np.asarray(work)))
        for degrees in (TURN_DEGREES, -TURN_DEGREES)[:count - 1]:
            views.append(work.rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=fill))
    if count > 3:
        views.append(_shrunk(work, max(8, round(size * LOW_RESOLUTION))))
    out = np.empty((count, 3, size, size), np.uint8)
    for i, view in enumerate(views):
        out[i] = np.asarray(view.resize((size, size), Image.Resampling.BILINEAR), np.uint8).transpose(2, 0, 1)
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
