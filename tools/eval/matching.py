"""Which detected box is the photographed object's: the one rule make eval's object groups and
the headroom replay share."""

from __future__ import annotations

import numpy as np

from tools.sample_photos import box_iou

MATCH_IOU = 0.5


def matching_box(boxes: list[tuple[float, ...]], box: tuple[int, ...] | None) -> int | None:
    """Index of the detected box that overlaps the photographed object most, if by IoU >= MATCH_IOU:
    the box whose group is the object's."""
    if box is None or not boxes:
        return None
    overlaps = [box_iou(tuple(b), box) for b in boxes]
    best = int(np.argmax(overlaps))
    return best if overlaps[best] >= MATCH_IOU else None
