"""The rules that choose among a photo's rows (objects.py): searched, listed, stored, and the
similarity floor."""

from __future__ import annotations

import numpy as np

from services.domain import REGION_LABEL, TENTATIVE_LABEL, WHOLE_IMAGE_LABEL
from services.search import objects
from tests.unit.fakes import MODELS, unit
from tests.unit.fakes import objects as photo_rows


def photo():
    return photo_rows(("cup", 0.9, unit(1, 0, 0, 0)), ("bird", 0.01, unit(0, 1, 0, 0)),
                      ("clock", 0.001, unit(0, 0, 1, 0)))


def test_the_whole_photo_is_always_the_flagged_last_row():
    rows = photo()
    assert rows.labels == ["cup", "bird", "clock", WHOLE_IMAGE_LABEL]
    assert rows.whole.tolist() == [False, False, False, True]
    assert rows.detected.tolist() == [True, True, True, False]


def test_a_search_keeps_boxes_from_the_requested_score_best_first_then_the_whole_photo():
    rows, nothing = objects.searched(photo(), 0.005, 4, False)
    assert rows.labels == ["cup", "bird", WHOLE_IMAGE_LABEL] and not nothing
    rows, _ = objects.searched(photo(), 0.0, 2, False)
    assert rows.labels == ["cup", "bird", WHOLE_IMAGE_LABEL]  # the two best boxes, never the third
    rows, _ = objects.searched(photo(), 0.0, 1, True)
    assert rows.labels == ["cup"]  # at most one box, the whole photo skipped
    rows, nothing = objects.searched(photo(), 0.95, 4, True)
    assert rows.labels == [WHOLE_IMAGE_LABEL] and nothing  # nothing kept: the whole photo despite skip


def test_a_search_keeps_the_postprocess_order_not_the_shown_score():
    # the postprocess ranked the box spread over classes (best class 0.1) before the sure cup
    ranked = photo_rows(("object", 0.1, unit(0, 1, 0, 0)), ("cup", 0.9, unit(1, 0, 0, 0)))
    rows, _ = objects.searched(ranked, 0.0, 1, True)
    assert rows.labels == ["object"]
    rows, _ = objects.searched(ranked, 0.5, 1, True)  # the score floor still applies
    assert rows.labels == ["cup"]


def test_the_list_takes_the_whole_photo_a_region_and_boxes_from_the_listed_score():
    rows, _ = objects.searched(photo(), 0.0, 4, False)
    assert objects.listed(rows, 0.005).tolist() == [True, True, False, True]
    faint_only, _ = objects.searched(photo(), 0.0, 4, True)  # the whole photo skipped
    assert objects.listed(faint_only, 0.95).tolist() == [True, True, True]  # none qualifies: all are listed
    region = objects.single(np.array([1, 2, 3, 4]), unit(1, 1, 0, 0), REGION_LABEL)
    assert objects.listed(region, 0.5).tolist() == [True] and not region.whole[0]


def test_only_confident_boxes_are_shown_and_named_the_rest_are_tentative_objects():
    rows, _ = objects.searched(photo(), 0.0, 4, False)
    assert objects.confident(rows, 0.25).tolist() == [True, False, False, True]
    assert objects.labels(rows, 0.25) == ["cup", TENTATIVE_LABEL, TENTATIVE_LABEL, WHOLE_IMAGE_LABEL]
    assert objects.labels(rows, 0.0) == ["cup", "bird", "clock", WHOLE_IMAGE_LABEL]
    region = objects.single(np.array([1, 2, 3, 4]), unit(1, 1, 0, 0), REGION_LABEL)
    assert objects.labels(region, 1.0) == [REGION_LABEL]


def test_the_confidence_bonus_grows_with_the_score_and_skips_the_whole_photo():
    rows, _ = objects.searched(photo(), 0.0, 4, False)  # scores 0.9, 0.01, 0.001, whole photo
    bonus = objects.confidence_bonus(rows, 0.05)
    assert np.allclose(bonus, [0.05 * np.log10(900), 0.05, 0.0, 0.0])
    assert not objects.confidence_bonus(rows, 0.0).any()


def test_a_catalog_image_stores_confident_boxes_and_its_whole_image():
    assert objects.stored(photo(), 0.05, True).labels == ["cup", WHOLE_IMAGE_LABEL]
    assert objects.stored(photo(), 0.05, False).labels == ["cup"]
    assert objects.stored(photo(), 0.95, False).labels == [WHOLE_IMAGE_LABEL]  # nothing confident


def test_the_recommended_similarity_applies_only_when_asked_and_none_is_given():
    models = MODELS.__class__(**{**MODELS.__dict__, "recommended_min_similarity": 0.33})
    assert objects.min_similarity(0.0, True, models) == 0.33
    assert objects.min_similarity(0.5, True, models) == 0.5
    assert objects.min_similarity(0.0, False, models) == 0.0
