"""Unit tests of the whole image's views and their pooling (services/triton_models/views.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.triton_models import imaging, views
from tests.unit.test_imaging import _found, _yolo


def _studio_photo() -> np.ndarray:
    """A dark object with fine light stripes on a plain light background."""
    pixels = np.full((300, 400, 3), 235, np.uint8)
    pixels[100:200, 150:250] = 0
    for row in range(100, 200, 8):
        pixels[row:row + 4, 150:250] = 160
    return pixels


def test_the_first_view_is_the_plain_whole_image_crop():
    pixels = _studio_photo()
    crops = views.whole_image_views(pixels, 64, 4)
    assert crops.shape == (4, 3, 64, 64) and crops.dtype == np.uint8
    plain = imaging.crop_resize(pixels, np.array([[0, 0, 400, 300]], np.float32), 64)
    assert (crops[0] == plain[0]).all()
    assert len({crops[i].tobytes() for i in range(4)}) == 4  # every view differs


def test_turned_views_fill_the_uncovered_corners_with_the_background():
    turned = views.whole_image_views(_studio_photo(), 64, 3)[1:]
    for view in turned:
        corners = view[:, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert corners.min() >= 225, corners  # the studio tone, not black triangles
        assert view.min() < 100  # the object is still there


@pytest.mark.parametrize("degrees", [views.TURN_DEGREES, -views.TURN_DEGREES])
def test_a_turned_view_is_pillows_expanded_rotation_resized(degrees):
    img = Image.fromarray(_studio_photo())
    turned = np.asarray(views.turned(img, degrees, 128, (235, 235, 235)), np.float32)
    rotated = img.rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=(235, 235, 235))
    reference = np.asarray(rotated.resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    other_way = np.asarray(img.rotate(-degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=(235, 235, 235))
                           .resize((128, 128), Image.Resampling.BILINEAR), np.float32)
    # same turn and canvas: only the resampling differs (edges of the stripes)
    assert np.abs(turned - reference).mean() < 4
    assert np.abs(turned - other_way).mean() > 2 * np.abs(turned - reference).mean()


def test_the_low_resolution_view_loses_the_fine_detail():
    crops = views.whole_image_views(_studio_photo(), 128, 4).astype(np.float32)
    detail = [np.abs(np.diff(c, axis=1)).mean() for c in crops]  # row-to-row change: the stripes
    assert detail[3] < 0.5 * detail[0], detail


@pytest.mark.parametrize("count", [0, views.MAX_VIEWS + 1])
def test_a_view_count_out_of_range_is_refused(count):
    with pytest.raises(ValueError, match="whole-image views must be"):
        views.whole_image_views(_studio_photo(), 32, count)


def test_pooling_replaces_the_views_by_their_normalised_mean_and_keeps_the_objects():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(5, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    pooled = views.pool_views(rows, 3)  # two objects, then three views of the whole image
    assert pooled.shape == (3, 8)
    assert np.allclose(pooled[:2], rows[:2])
    mean = rows[2:].mean(axis=0)
    assert np.allclose(pooled[2], mean / np.linalg.norm(mean), atol=1e-6)
    assert np.allclose(views.pool_views(rows[:2], 2), rows[:2])  # one view: nothing to pool
    with pytest.raises(ValueError, match="cannot hold"):
        views.pool_views(rows, 6)


def test_detections_end_with_the_whole_images_views():
    pixels = _studio_photo()
    raw = _yolo((200, 150, 100, 100, 0, 0.9))
    geometry = np.array([1, 0, 0, 1, 1, 400, 300, 400, 300], np.float32)
    found = _found(raw, pixels, geometry, 3, imaging.DetectionSettings(whole_image_views=4),
                                            32)
    assert len(found.boxes) == 2 and len(found.crops) == 1 + 4
    assert (found.box_crops[1] == views.whole_image_views(pixels, 32, 1)[0]).all()
    assert imaging.DetectionSettings.from_parameters(
        {"score_threshold": "0.1", "iou_threshold": "0.5", "max_objects": "4", "whole_image_views": "3"}
    ).whole_image_views == 3
