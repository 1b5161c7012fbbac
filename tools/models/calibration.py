"""Calibration photos for INT8 quantization: real photos that no test or evaluation uses.

The nature photos (and one of elephants) of Debian's `mate-backgrounds` package (GPL-2+),
fetched with `apt-get download` into the cache at build time, never committed. They are also
the reference set of the embedders' whitening; the evaluation uses other photos.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from services.triton_models import imaging
from tools import debian

log = logging.getLogger(__name__)

PACKAGE = "mate-backgrounds"
LICENSE = "GPL-2+ (Debian package mate-backgrounds)"
PHOTOS = "usr/share/backgrounds/mate/nature/*.jpg"
EXTRA = "usr/share/backgrounds/mate/abstract/Elephants.jpg"


def fetch(cache: Path) -> list[Path]:
    """The calibration photos, downloaded and unpacked into ``cache`` once."""
    root = debian.fetch(PACKAGE, cache)
    photos = sorted(root.glob(PHOTOS)) + [root / EXTRA]
    return [p for p in photos if p.is_file()]


def opened(path: Path) -> Image.Image:
    """A reference photo as RGB, its long side at most 1344 (what the service works on)."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((1344, 1344))
    return img


def detector_inputs(photos: list[Path], size: int) -> list[np.ndarray]:
    """Letterboxed photos, as the preprocess model feeds the detector (1x3xSxS uint8)."""
    return [imaging.letterbox(np.asarray(opened(p)), size)[0][None] for p in photos]


def embedder_inputs(photos: list[Path], size: int, per_photo: int = 6, seed: int = 0) -> list[np.ndarray]:
    """Random crops (object-sized and larger), as the postprocess model feeds the embedder."""
    rng = np.random.default_rng(seed)
    batches = []
    for path in photos:
        pixels = np.asarray(opened(path))
        h, w = pixels.shape[:2]
        for _ in range(per_photo):
            cw, ch = int(w * rng.uniform(0.15, 0.9)), int(h * rng.uniform(0.15, 0.9))
            x, y = int(rng.uniform(0, w - cw)), int(rng.uniform(0, h - ch))
            batches.append(imaging.crop_resize(pixels, np.array([[x, y, x + cw, y + ch]], np.float32), size))
    return batches
