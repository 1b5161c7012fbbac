"""Image decoding, letterboxing, NMS and cropping: the pipeline's image code.

Imported by the Python-backend models in ``model_repository/`` and by the in-process
reference pipeline, so both run the same code. Needs only numpy and Pillow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError

from services.domain import WHOLE_IMAGE_LABEL
from services.triton_models import views

# We enforce our own pixel budget before decoding; Pillow's global guard would raise a
# warning-turned-error with a less useful message.
Image.MAX_IMAGE_PIXELS = None
# HEIC/HEIF, the iPhone camera's default format, through libheif (Pillow reads AVIF itself).
# libheif applies the file's rotation while decoding and resets the EXIF orientation to 1, so
# the EXIF step below never rotates a HEIC twice.
pillow_heif.register_heif_opener()

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF", "AVIF")
ACCEPTED = "JPEG, PNG, WebP, HEIC/HEIF or AVIF"
_SWAPPED_ORIENTATIONS = (5, 6, 7, 8)
LETTERBOX_FILL = 114


class InvalidImage(ValueError):
    """The bytes are not an image we accept; the message says why, for the caller."""


@dataclass
class Decoded:
    pixels: np.ndarray  # HxWx3 uint8 RGB, possibly downscaled for speed
    width: int  # original width after EXIF orientation
    height: int  # original height after EXIF orientation

    @property
    def scale_x(self) -> float:
        return self.width / self.pixels.shape[1]

    @property
    def scale_y(self) -> float:
        return self.height / self.pixels.shape[0]


def decode(data: bytes, max_pixels: int, work_side: int) -> Decoded:
    """Decode JPEG/PNG/WebP/HEIC/AVIF bytes, apply EXIF orientation, keep at most ``work_side`` px a side.

    Raises InvalidImage for empty, non-image, unsupported, oversized or truncated data.
    """
    if not data:
        raise InvalidImage("image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(f"image bytes are not a decodable image ({len(data)} bytes; "
                           f"{ACCEPTED} expected)") from None
    except Exception as exc:  # Pillow raises many types on garbage headers
        raise InvalidImage(f"image header is corrupt: {exc}") from None
    if img.format not in ACCEPTED_FORMATS:
        raise InvalidImage(f"image format {img.format} is not supported ({ACCEPTED} expected)")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height} = {width * height} pixels, "
                           f"above the limit of {max_pixels} pixels")
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    if orientation in _SWAPPED_ORIENTATIONS:
        width, height = height, width
    try:
        if img.format == "JPEG":
            # DCT-domain downscaling: a 12 MP photo decodes several times faster.
            img.draft("RGB", (work_side, work_side))
        img.load()
        # In place, and no conversion of what is RGB already: each copy of a 12 MP photo's
        # working picture costs milliseconds.
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode != "RGB":
            img = img.convert("RGB")
    except Exception as exc:
        raise InvalidImage(f"image data is truncated or corrupt: {exc}") from None
    if max(img.size) > work_side:
        img.thumbnail((work_side, work_side), Image.Resampling.BILINEAR)
    return Decoded(np.asarray(img, dtype=np.uint8), width, height)


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, float, float, float]:
    """Resize keeping aspect into a ``size`` square padded with grey (Ultralytics' recipe).

    Returns the CHW uint8 tensor (the detector graph scales it to 0..1; uint8 moves 4x fewer
    bytes between the ensemble's steps) and (ratio, pad_x, pad_y) mapping the input
    pixels to the square.
    """
    h, w = pixels.shape[:2]
    ratio = min(size / h, size / w)
    new_w, new_h = max(1, round(w * ratio)), max(1, round(h * ratio))
    resized = np.asarray(Image.fromarray(pixels).resize((new_w, new_h), Image.Resampling.BILINEAR))
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    # Filled channels-first: only the resized picture is transposed, not the whole square.
    canvas = np.full((3, size, size), LETTERBOX_FILL, np.uint8)
    top, left = int(round(pad_y - 0.1)), int(round(pad_x - 0.1))
    canvas[:, top:top + new_h, left:left + new_w] = resized.transpose(2, 0, 1)
    return canvas, ratio, float(left), float(top)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy NMS over xyxy boxes; returns kept indices by descending score, at most ``limit``
    (greedy NMS keeps in score order, so stopping there keeps the same first ``limit``)."""
    order = np.argsort(-scores)
    keep: list[int] = []
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    while order.size and (limit is None or len(keep) < limit):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# With rank_by_class_sum, how many boxes (NMS's best by their best class) are reordered by their
# class sum: the pool the rule was chosen on (`make eval-headroom`'s wide pool of 64 holds the
# object's box in 95 % of the scene photos), and a bound on a busy photo's NMS.
RANKED_CANDIDATES = 64


@dataclass(frozen=True)
class DetectionSettings:
    """The postprocess model's parameters (model_repository/postprocess/config.pbtxt)."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_objects: int = 16
    class_agnostic_nms: bool = False  # one NMS over all classes: one box per object, whatever its class
    min_box_fraction: float = 0.0  # drop boxes smaller than this share of the photo
    max_box_fraction: float = 1.0  # drop boxes larger than this share (the whole photo is searched anyway)
    crop_margin: float = 0.0  # each side of an object's crop widened by this share of its box
    whole_image_views: int = 1  # crops of the whole image whose embeddings are averaged (views.py)
    # Which boxes are kept (at most max_objects) and in what order: by the sum of their class
    # scores rather than their best class's. A product outside the detector's classes spreads
    # its score over several of them, a patch of background scores low on all.
    rank_by_class_sum: bool = False

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> DetectionSettings:
        return cls(float(params["score_threshold"]), float(params["iou_threshold"]), int(params["max_objects"]),
                   params.get("class_agnostic_nms", "0") == "1", float(params.get("min_box_fraction", "0")),
                   float(params.get("max_box_fraction", "1")), float(params.get("crop_margin", "0")),
                   int(params.get("whole_image_views", "1")), params.get("rank_by_class_sum", "0") == "1")

    def at_most(self, objects: int) -> DetectionSettings:
        """These settings keeping at most ``objects`` boxes (at least 1, never more than
        ``max_objects``): the best-ranked ones, so a search that sends only its best boxes to
        Milvus crops and embeds no other (at least 1: no box at all would read as nothing detected)."""
        return replace(self, max_objects=max(1, min(self.max_objects, objects)))

    def at_least(self, score: float) -> DetectionSettings:
        """These settings keeping only boxes scored ``score`` or more (their best class's score,
        the one a response shows; a floor under ``score_threshold`` changes nothing). The floor
        applies before the ranking and the ``max_objects`` cut: with ``rank_by_class_sum`` a box
        under it could otherwise take the place of one above it. NMS visits boxes best score
        first, so a box under the floor never suppressed one above it: dropping it first keeps
        exactly the boxes that dropping it after would (and more of them, the cut being later)."""
        return replace(self, score_threshold=max(self.score_threshold, float(score)))

    def for_request(self, objects: int | None = None, min_score: float = 0.0) -> DetectionSettings:
        """These settings as one request asks: at most ``objects`` boxes (``at_most``; None: as
        configured), none scored under ``min_score`` (``at_least``; 0: no floor)."""
        return (self if objects is None else self.at_most(objects)).at_least(min_score)


def detect(raw: np.ndarray, num_classes: int, settings: DetectionSettings,
           image_area: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode one YOLO output ``[4+C, N]`` into xyxy boxes (letterbox px), scores, classes.

    NMS per class (boxes offset per class) unless class-agnostic; boxes outside the settings'
    share of ``image_area`` (letterbox px^2) dropped before NMS; at most ``max_objects`` kept,
    best first. The score returned is the best class's (the label's); with
    ``rank_by_class_sum`` the best ``RANKED_CANDIDATES`` boxes after NMS are reordered by the sum
    of their class scores before the cut.
    """
    # Along the rows as the detector lays them out ([4+C, N]): reducing a transposed view
    # strides across memory and took 3x longer.
    class_scores = raw[4:4 + num_classes]
    classes = class_scores.argmax(axis=0)
    scores = class_scores.max(axis=0)
    mask = scores >= settings.score_threshold
    if image_area and (settings.min_box_fraction > 0 or settings.max_box_fraction < 1):
        share = raw[2] * raw[3] / image_area
        mask &= (share >= settings.min_box_fraction) & (share <= settings.max_box_fraction)
    if not mask.any():
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    cx, cy, w, h = raw[:4, mask]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    scores, classes = scores[mask], classes[mask]
    offset = 0.0 if settings.class_agnostic_nms else classes[:, None].astype(np.float32) * 10_000.0
    if not settings.rank_by_class_sum:
        keep = nms(boxes + offset, scores, settings.iou_threshold, settings.max_objects)
    else:
        keep = nms(boxes + offset, scores, settings.iou_threshold, max(RANKED_CANDIDATES, settings.max_objects))
        ranks = class_scores[:, np.flatnonzero(mask)[keep]].sum(axis=0)  # only the kept boxes' columns
        keep = keep[np.argsort(-ranks, kind="stable")][:settings.max_objects]
    return boxes[keep].astype(np.float32), scores[keep].astype(np.float32), classes[keep].astype(np.int32)


def crop_windows(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Kx4 float32: each xyxy box widened to whole pixels (floor, ceil), at least 1 px, inside
    the image: the pixels its crop takes."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    left = np.clip(np.floor(boxes[:, 0]), 0, width - 1)
    top = np.clip(np.floor(boxes[:, 1]), 0, height - 1)
    right = np.clip(np.ceil(boxes[:, 2]), left + 1, width)
    bottom = np.clip(np.ceil(boxes[:, 3]), top + 1, height)
    return np.stack([left, top, right, bottom], axis=1).astype(np.float32)


def crop_resize(pixels: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crop each xyxy box (in ``pixels`` coordinates) and resize to ``size``; NCHW uint8."""
    img = Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    out = np.empty((len(boxes), 3, size, size), np.uint8)
    for i, window in enumerate(crop_windows(boxes, w, h).astype(int).tolist()):
        crop = img.crop(tuple(window)).resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(crop, np.uint8).transpose(2, 0, 1)
    return out


def labels(class_ids: np.ndarray, classes: list[str]) -> list[str]:
    """Class names of detections; the whole-image fallback (-1) is WHOLE_IMAGE_LABEL."""
    return [WHOLE_IMAGE_LABEL if c < 0 else classes[c] for c in class_ids]


@dataclass
class Located:
    """Where the objects are: everything but their pixels."""

    boxes: np.ndarray  # Kx4 xyxy in original-image pixels
    scores: np.ndarray  # K
    class_ids: np.ndarray  # K, -1 for the whole-image fallback
    crop_boxes: np.ndarray  # (K - 1)x4 xyxy whole pixels of the working picture: each object's crop
    fallback: bool  # nothing detected: the whole image (always the last row) is the only row


@dataclass
class Detections:
    boxes: np.ndarray  # Kx4 xyxy in original-image pixels
    scores: np.ndarray  # K
    class_ids: np.ndarray  # K, -1 for the whole-image fallback
    crops: np.ndarray  # (K - 1 + views)x3xSxS uint8 RGB, the embedder's input: the objects, then the
    # whole image's views (views.pool_views turns their embeddings into the whole image's one)
    fallback: bool  # nothing detected: the whole image (always the last row) is the only row

    @property
    def box_crops(self) -> np.ndarray:
        """One crop per box: the objects' and the whole image's plain view (its first)."""
        return self.crops[:len(self.boxes)]


def prepare_detector_input(decoded: Decoded, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The detector tensor (3xSxS) and the geometry that maps its boxes back (9 floats: the
    letterbox's ratio and padding, the working picture's scale to the original, the original's
    width and height, the working picture's width and height)."""
    tensor, ratio, pad_x, pad_y = letterbox(decoded.pixels, size)
    work_h, work_w = decoded.pixels.shape[:2]
    geometry = np.array([ratio, pad_x, pad_y, decoded.scale_x, decoded.scale_y,
                         decoded.width, decoded.height, work_w, work_h], np.float32)
    return tensor, geometry


def locate(raw: np.ndarray, geometry: np.ndarray, num_classes: int, settings: DetectionSettings) -> Located:
    """YOLO output for one image -> boxes in original pixels, and the crop boxes in the
    working picture (widened by the settings' ``crop_margin``).

    The last row is always the whole image (class -1, score 0): every photo is also searched
    and stored as a whole, so a product is found even when the two photos' detections differ.
    ``fallback`` says that it is the only row (nothing was detected)."""
    ratio, pad_x, pad_y, scale_x, scale_y, width, height, w, h = geometry.tolist()
    # the photo's area in letterbox pixels, what the box shares are measured against
    boxes, scores, classes = detect(raw, num_classes, settings, image_area=w * h * ratio * ratio)
    work = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], np.float32)) / ratio
    work = np.clip(work, 0, [w, h, w, h]).astype(np.float32)
    valid = ((work[:, 2] - work[:, 0]) >= 2) & ((work[:, 3] - work[:, 1]) >= 2)
    work, scores, classes = work[valid], scores[valid], classes[valid]
    fallback = len(work) == 0
    crop_boxes = crop_windows(widened(work.reshape(-1, 4), settings.crop_margin, w, h), int(w), int(h))
    work = np.concatenate([work.reshape(-1, 4), np.array([[0, 0, w, h]], np.float32)])
    scores = np.concatenate([scores, np.zeros((1,), np.float32)])
    classes = np.concatenate([classes, np.full((1,), -1, np.int32)])
    original = work * np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
    original = np.clip(original, 0, [width, height, width, height]).astype(np.float32)
    return Located(original, scores.astype(np.float32), classes.astype(np.int32), crop_boxes, fallback)


def crops_of(pixels: np.ndarray, crop_boxes: np.ndarray, crop_size: int, view_count: int) -> np.ndarray:
    """The embedder's input for one photo with Pillow: each crop box's crop, then the whole
    image's ``view_count`` views. The crops model's graph (GPU configs) does the same."""
    return np.concatenate([crop_resize(pixels, crop_boxes, crop_size),
                           views.whole_image_views(pixels, crop_size, view_count)])


def widened(boxes: np.ndarray, margin: float, width: float, height: float) -> np.ndarray:
    """xyxy boxes with each side moved out by ``margin`` of the box's size, clipped to the image."""
    if margin <= 0:
        return boxes
    size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1) * np.array([-1, -1, 1, 1], np.float32)
    return np.clip(boxes + size * margin, 0, [width, height, width, height]).astype(np.float32)


def region_crop(decoded: Decoded, region: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop a caller-given x1,y1,x2,y2 region (original px; all zeros = whole image).

    Returns the 1x3xSxS crop and the 1x4 clipped box actually used.
    """
    region = np.asarray(region, np.float64).reshape(-1)
    width, height = decoded.width, decoded.height
    if region.shape != (4,):
        raise InvalidImage(f"region must have 4 coordinates, got {region.shape[0]}")
    if not np.all(np.isfinite(region)):
        raise InvalidImage("region holds a non-finite coordinate")
    if not np.any(region):
        region = np.array([0, 0, width, height], np.float64)
    x1, y1, x2, y2 = np.clip(region, 0, [width, height, width, height])
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise InvalidImage(f"region {region.tolist()} is empty or outside the {width}x{height} image "
                           "(x1, y1, x2, y2 in original pixels, x2 > x1, y2 > y1)")
    box = np.array([[x1, y1, x2, y2]], np.float32)
    work = box / np.array([decoded.scale_x, decoded.scale_y] * 2, np.float32)
    return crop_resize(decoded.pixels, work, crop_size), box
