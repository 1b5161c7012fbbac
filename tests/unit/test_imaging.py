"""Unit tests of the image code the Python-backend models share (decode, letterbox, NMS)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from services.triton_models import imaging
from tests.payloads import png_with_declared_size
from tools.sample_photos import encode


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(imaging.InvalidImage, match="100000x100000 = 10000000000 pixels, above the limit"):
        imaging.decode(png_with_declared_size(100_000, 100_000), 50_000_000, 1344)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"\x00" * 100, "not a decodable image"),
    (b"GIF89a" + b"\x00" * 200, "not"),
])
def test_bad_bytes_get_a_reason(payload, message):
    with pytest.raises(imaging.InvalidImage, match=message):
        imaging.decode(payload, 50_000_000, 1344)


def test_unsupported_format_is_named():
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, format="GIF")
    with pytest.raises(imaging.InvalidImage, match="format GIF is not supported"):
        imaging.decode(buf.getvalue(), 50_000_000, 1344)


def test_exif_orientation_is_applied_and_original_size_reported():
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, :50] = 255  # a white band on the left of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", exif=exif.tobytes())
    decoded = imaging.decode(buf.getvalue(), 50_000_000, 1344)
    assert (decoded.width, decoded.height) == (100, 300)
    assert decoded.pixels.shape[:2] == (300, 100)
    assert decoded.pixels[:50].mean() > 200 and decoded.pixels[-50:].mean() < 50  # band now on top


def test_large_photos_are_downscaled_for_work_but_keep_original_geometry():
    decoded = imaging.decode(encode(np.zeros((3000, 4000, 3), np.uint8)), 50_000_000, 1344)
    assert max(decoded.pixels.shape[:2]) <= 1344
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.scale_x == pytest.approx(4000 / decoded.pixels.shape[1])


def test_letterbox_maps_boxes_back_exactly():
    pixels = np.zeros((400, 600, 3), np.uint8)
    tensor, ratio, pad_x, pad_y = imaging.letterbox(pixels, 672)
    assert tensor.shape == (3, 672, 672) and tensor.dtype == np.uint8
    assert ratio == pytest.approx(672 / 600) and pad_x == 0 and pad_y == pytest.approx(112, abs=1)
    assert tensor[:, 0, 0].tolist() == [114, 114, 114]  # padding is Ultralytics grey


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    keep = imaging.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_region_outside_the_image_is_refused():
    decoded = imaging.decode(encode(np.zeros((100, 200, 3), np.uint8)), 50_000_000, 1344)
    with pytest.raises(imaging.InvalidImage, match="outside the 200x100 image"):
        imaging.region_crop(decoded, [300, 300, 400, 400], 224)
    crops, box = imaging.region_crop(decoded, [0, 0, 0, 0], 224)
    assert crops.shape == (1, 3, 224, 224) and box.tolist() == [[0, 0, 200, 100]]


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "200000 100000\n"}, 2),  # cgroup v2, 2 CPUs
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs -> 2 threads
    ({"cpu.max": "max 100000\n"}, None),  # no limit
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
])
def test_onnxruntime_threads_follow_the_containers_cpu_limit(tmp_path, files, expected):
    import os

    from services.triton_models.cpu_limit import cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    available = len(os.sched_getaffinity(0))
    assert cpu_limit(tmp_path) == (min(expected, available) if expected else available)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF", "JPEG"])
@pytest.mark.parametrize("orientation", [1, 6, 8, 3])
def test_phone_formats_decode_upright_whatever_their_exif_orientation(fmt, orientation):
    from tools.sample_photos import load_photos

    pixels = load_photos()["coffee"].pixels  # 600x400, a real photo
    data = encode(pixels, fmt, quality=90, orientation=orientation)
    decoded = imaging.decode(data, 50_000_000, 1344)
    assert (decoded.width, decoded.height) == (600, 400)
    assert decoded.pixels.shape == pixels.shape
    assert np.abs(decoded.pixels.astype(int) - pixels.astype(int)).mean() < 6  # upright, not turned


def test_a_heic_over_the_pixel_limit_is_refused_before_decoding():
    data = encode(np.zeros((300, 400, 3), np.uint8), "HEIF")
    with pytest.raises(imaging.InvalidImage, match="400x300 = 120000 pixels, above the limit of 100000"):
        imaging.decode(data, 100_000, 1344)


def _yolo(*boxes: tuple[float, float, float, float, int, float], classes: int = 3) -> np.ndarray:
    """A YOLO output [4+C, N]: (cx, cy, w, h, class, score) per candidate."""
    raw = np.zeros((4 + classes, len(boxes)), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(boxes):
        raw[:4, i] = cx, cy, w, h
        raw[4 + cls, i] = score
    return raw


def test_class_agnostic_nms_keeps_one_box_per_object_whatever_its_class():
    raw = _yolo((100, 100, 80, 80, 0, 0.9), (102, 101, 80, 80, 1, 0.8), (400, 400, 50, 50, 2, 0.7))
    per_class = imaging.detect(raw, 3, imaging.DetectionSettings())
    agnostic = imaging.detect(raw, 3, imaging.DetectionSettings(class_agnostic_nms=True))
    assert len(per_class[0]) == 3
    assert agnostic[2].tolist() == [0, 2]


def test_ranked_by_class_sum_a_box_spread_over_classes_is_kept_before_one_sure_of_a_single_class():
    raw = _yolo((100, 100, 80, 80, 0, 0.30), (400, 400, 60, 60, 1, 0.20), (250, 250, 40, 40, 2, 0.10))
    raw[4:, 1] = 0.20, 0.20, 0.20  # the second box: no class sure, all of them likely (sum 0.60)
    raw[4, 2] = 0.15  # the third overlaps no one: sum 0.25
    by_best = imaging.DetectionSettings(score_threshold=0.01, max_objects=2, class_agnostic_nms=True)
    by_sum = replace(by_best, rank_by_class_sum=True)
    boxes, scores, _ = imaging.detect(raw, 3, by_best)
    assert scores.tolist() == pytest.approx([0.30, 0.20])
    boxes, scores, classes = imaging.detect(raw, 3, by_sum)
    # the spread box first; each keeps its best class's score and label
    assert boxes[:, 0].tolist() == [370, 60] and scores.tolist() == pytest.approx([0.20, 0.30])
    assert classes.tolist()[1] == 0
    # the cut follows the order: with one box, the spread one
    one = imaging.detect(raw, 3, replace(by_sum, max_objects=1))
    assert one[0][:, 0].tolist() == [370]


def test_ranked_by_class_sum_nms_still_suppresses_by_the_best_class():
    # two overlapping boxes: the surer one (0.9) suppresses the other even though its class sum is lower
    raw = _yolo((100, 100, 80, 80, 0, 0.9), (102, 101, 80, 80, 1, 0.5))
    raw[4:, 1] = 0.5, 0.5, 0.5
    boxes, scores, _ = imaging.detect(raw, 3, imaging.DetectionSettings(class_agnostic_nms=True,
                                                                      rank_by_class_sum=True))
    assert scores.tolist() == pytest.approx([0.9])


def test_the_postprocess_parameters_turn_the_class_sum_ranking_on():
    params = {"score_threshold": "0.002", "iou_threshold": "0.45", "max_objects": "8"}
    assert not imaging.DetectionSettings.from_parameters(params).rank_by_class_sum
    assert imaging.DetectionSettings.from_parameters({**params, "rank_by_class_sum": "1"}).rank_by_class_sum


def test_box_share_limits_drop_tiny_and_whole_photo_boxes():
    raw = _yolo((320, 320, 630, 630, 0, 0.9), (100, 100, 10, 10, 1, 0.8), (400, 400, 120, 120, 2, 0.7))
    settings = imaging.DetectionSettings(min_box_fraction=0.01, max_box_fraction=0.9)
    boxes, scores, classes = imaging.detect(raw, 3, settings, image_area=640 * 640)
    assert classes.tolist() == [2]
    assert len(imaging.detect(raw, 3, imaging.DetectionSettings(), image_area=640 * 640)[0]) == 3


def _found(raw, pixels, geometry, num_classes, settings, crop_size):
    """What the postprocess and crops models make of one YOLO output."""
    located = imaging.locate(raw, geometry, num_classes, settings)
    crops = imaging.crops_of(pixels, located.crop_boxes, crop_size, settings.whole_image_views)
    return imaging.Detections(located.boxes, located.scores, located.class_ids, crops, located.fallback)


def test_a_crop_margin_widens_the_embedded_crop_but_not_the_reported_box():
    # a white square on black; the detector (letterbox 1:1, no padding) boxes it tightly
    pixels = np.zeros((200, 200, 3), np.uint8)
    pixels[50:150, 50:150] = 255
    raw = _yolo((100, 100, 100, 100, 0, 0.9))
    geometry = np.array([1, 0, 0, 1, 1, 200, 200, 200, 200], np.float32)
    tight = _found(raw, pixels, geometry, 3, imaging.DetectionSettings(), 32)
    wide = _found(raw, pixels, geometry, 3, imaging.DetectionSettings(crop_margin=0.25),
                                           32)
    assert tight.boxes[0].tolist() == wide.boxes[0].tolist() == [50, 50, 150, 150]
    assert tight.crops[0].min() == 255  # the square fills the tight crop
    inner = wide.crops[0][:, 8:24, 8:24]  # the square is the middle two thirds of the wide crop
    assert inner.min() == 255 and wide.crops[0][:, :3, :].max() == 0
    assert (wide.crops[1] == tight.crops[1]).all()  # the whole image is not widened


def test_detection_settings_at_most_keep_fewer_boxes_never_more_and_at_least_one():
    settings = imaging.DetectionSettings(max_objects=8)
    assert settings.at_most(4).max_objects == 4
    assert settings.at_most(50).max_objects == 8
    assert settings.at_most(0).max_objects == 1  # none at all would read as nothing detected
    assert settings.at_most(4).score_threshold == settings.score_threshold


def test_a_score_floor_applies_before_the_class_sum_cut():
    # ranked by class sum: a faint box spread over every class (score 0.2, sum 0.6) ranks before
    # two sure ones (0.5 and 0.4); a floor of 0.3 then asks for the best two from 0.3
    raw = _yolo((100, 100, 40, 40, 0, 0.5), (300, 300, 40, 40, 1, 0.4), (500, 500, 40, 40, 2, 0.2))
    raw[4:, 2] = 0.2, 0.2, 0.2
    settings = imaging.DetectionSettings(score_threshold=0.01, max_objects=2, class_agnostic_nms=True,
                                         rank_by_class_sum=True)
    assert imaging.detect(raw, 3, settings)[1].tolist() == pytest.approx([0.2, 0.5])
    # cutting first and flooring after would leave one box; flooring first keeps both above it
    floored = imaging.detect(raw, 3, settings.for_request(2, 0.3))
    assert floored[1].tolist() == pytest.approx([0.5, 0.4])
    assert settings.for_request(None, 0.001).score_threshold == 0.01  # never under the configured threshold
    assert settings.for_request(None, 0.0) == settings


def test_by_the_best_class_a_floor_first_keeps_what_a_floor_after_keeps():
    # NMS visits boxes best first: a box under the floor never suppressed one above it
    rng = np.random.default_rng(7)
    raw = np.zeros((4 + 3, 300), np.float32)
    raw[:2] = rng.uniform(50, 590, (2, 300))
    raw[2:4] = rng.uniform(20, 200, (2, 300))
    raw[4:] = rng.uniform(0, 1, (3, 300)) ** 4
    settings = imaging.DetectionSettings(score_threshold=0.002, max_objects=300, class_agnostic_nms=True)
    boxes, scores, _ = imaging.detect(raw, 3, settings)
    floored_boxes, floored_scores, _ = imaging.detect(raw, 3, settings.at_least(0.2))
    assert 0 < len(floored_scores) < len(scores)
    np.testing.assert_array_equal(floored_boxes, boxes[scores >= 0.2])
