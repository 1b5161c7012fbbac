"""The headroom replay's own pieces: trimming a studio shot, the windows grid, per-product search."""

from __future__ import annotations

import numpy as np

from tools.eval.headroom import CatalogRows, trimmed_box, windows


def test_a_studio_shot_is_trimmed_to_its_object():
    pixels = np.full((120, 200, 3), 240, np.uint8)
    pixels[30:70, 50:90] = (200, 30, 30)  # the object
    pixels[10, 10] = (236, 240, 243)  # JPEG-like noise on the background stays background
    assert trimmed_box(pixels).tolist() == [50, 30, 90, 70]
    assert trimmed_box(np.full((50, 50, 3), 240, np.uint8)) is None


def test_windows_cover_the_photo_edge_to_edge_half_overlapping():
    grid = windows(1000, 600)
    side = 0.35 * 600
    np.testing.assert_allclose(grid[:, 2] - grid[:, 0], side)
    np.testing.assert_allclose(grid[:, 3] - grid[:, 1], side)
    assert grid[:, 0].min() == 0 and grid[:, 1].min() == 0
    np.testing.assert_allclose([grid[:, 2].max(), grid[:, 3].max()], [1000, 600])
    xs = np.unique(grid[:, 0])
    assert np.all(np.diff(xs) <= side * 0.5 + 1e-3)  # no gap and at least half overlapping
    assert len(grid) == len(xs) * len(np.unique(grid[:, 1]))


def test_a_product_scores_its_best_row_over_the_kinds_asked_for():
    a, b, c = np.eye(3, dtype=np.float32)
    rows = CatalogRows({"stored": (np.stack([a, b]), np.array([0, 1])), "extra": (c[None], np.array([0]))})
    query = np.array([0.1, 0.2, 0.9], np.float32)
    np.testing.assert_allclose(rows.search(("stored",), query, 2), [0.1, 0.2])
    np.testing.assert_allclose(rows.search(("stored", "extra"), query, 2), [0.9, 0.2])
    # several query vectors: the best of them
    np.testing.assert_allclose(rows.search(("stored",), np.stack([query, b]), 2), [0.1, 1.0])


def test_the_objects_box_is_the_one_overlapping_it_most_from_iou_one_half():
    from tools.eval.matching import matching_box

    obj = (100, 100, 200, 200)
    boxes = [(0, 0, 50, 50), (110, 100, 210, 200), (100, 100, 200, 200)]
    assert matching_box(boxes, obj) == 2
    assert matching_box([(150, 100, 250, 200)], obj) is None  # IoU 1/3
    assert matching_box([], obj) is None and matching_box(boxes, None) is None


def test_the_pools_are_the_searched_boxes_the_kept_ones_and_a_wider_lower_threshold():
    from services.triton_models.imaging import DetectionSettings
    from tools.eval.headroom import WIDE_BOXES, WIDE_SCORE, pools

    shipped = DetectionSettings(score_threshold=0.002, max_objects=8, class_agnostic_nms=True, whole_image_views=4)
    found = pools(shipped, 4)
    assert found["searched"] == shipped.at_most(4) and found["kept"] == shipped
    assert (found["wide"].score_threshold, found["wide"].max_objects) == (WIDE_SCORE, WIDE_BOXES)
    assert found["wide"].class_agnostic_nms and found["wide"].whole_image_views == 4


def test_a_scene_counts_in_its_kind_its_background_part_and_its_product_count():
    from tools.eval.dataset import Query
    from tools.eval.headroom import report_rows

    def query(kind: str, copied: bool, other: str | None = None) -> Query:
        return Query("q", "p", kind, "q.jpg", (0, 0, 1, 1), other, "scene-photo", copied)

    assert report_rows(query("scene", False)) == ("anywhere, all", "anywhere, look-alikes, all",
                                                  "anywhere, look-alikes, one product")
    assert report_rows(query("scene", True, "p2")) == ("anywhere, all", "anywhere, copies, all",
                                                       "anywhere, two catalog products")
    assert report_rows(query("scene_centred", True)) == ("centred, all", "centred, copies, all")


def test_box_choice_scores_each_pool_by_its_box_else_the_whole_photo():
    from tools.eval.headroom import SceneQuery, box_choice

    right, wrong = np.eye(2, dtype=np.float32)
    rows = CatalogRows({"stored": (np.stack([right, wrong]), np.array([0, 1]))})
    near_right = np.array([0.9, 0.1], np.float32)

    def scene(boxes: dict, whole: np.ndarray) -> SceneQuery:
        return SceneQuery(0, "scene", ("anywhere, all",), boxes, None, whole, None)

    queries = [
        # boxed only in the wide pool; the whole photo misses
        scene({"searched": None, "kept": None, "wide": near_right}, wrong),
        # boxed among the searched, but the box ranks a wrong product first; the whole photo is right
        scene({"searched": wrong, "kept": wrong, "wide": wrong}, near_right),
    ]
    got = box_choice(queries, rows, 2)["anywhere, all"]
    assert got["photos"] == 2
    assert [got[p]["boxed"] for p in ("searched", "kept", "wide")] == [0.5, 0.5, 1.0]
    # the object's group is its box when the pool has one, else the whole photo
    assert [got[p]["group_recall1"] for p in ("searched", "kept", "wide")] == [0.0, 0.0, 0.5]
    # the list's best case: the box or the whole photo
    assert [got[p]["box_or_whole_first"] for p in ("searched", "kept", "wide")] == [0.5, 0.5, 1.0]
