"""A seeded slice of the `make eval` set through the real stack with the shipped models and
settings: shoppers' photos of catalog objects must find them. Fails when quality regresses
(the thresholds sit below the full evaluation's figures in docs/evaluation.md, with room for
the slice's sampling noise)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import require
from tools import debian
from tools.cache import default_cache
from tools.eval import dataset
from tools.eval.run import import_catalog, run_queries, scores
from tools.stack.local_stack import local_stack

SLICE_PRODUCTS = 24
# Recall@1 of the list the caller reads. With the shipped settings this slice measured list
# scene 0.625 (30 of 48; its best groups 0.708), scene_centred 0.833 (20 of 24; groups 0.875),
# re-shots 1.0 (2026-12-07 17:00 UTC, boxes ranked by their class sum; 28 and 20 of them ranked
# by their best class; 21 and 15 when the look-alikes were cut from every scene photo); the
# thresholds sit three queries below (sampling noise of a small slice). The previous list, by
# similarity alone, put a background look-alike first: scene 0.08 in `make eval`. The full
# evaluation's figures are in docs/evaluation.md.
BACKGROUND_DISTRACTORS = 200
MIN_LIST_RECALL1 = {"scene": 27 / 48, "scene_centred": 17 / 24, "reshot": 0.9}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    try:
        # a tenth of `make eval`'s look-alike distractors (products cut from half of the scene
        # photos): enough for backgrounds to compete for the list's first place
        evalset = dataset.build(folder / "set", default_cache(), max_products=SLICE_PRODUCTS,
                                background_distractors=BACKGROUND_DISTRACTORS)
    except debian.PackageUnavailable as exc:
        require(None, "the evaluation photos (Debian packages)", f"apt-get download must work: {exc}")
    reshots = [q for q in evalset.queries if q.kind == "reshot"]
    with local_stack(folder / "stack") as stack:
        import_catalog(stack.address, evalset.manifest)
        answers = asyncio.run(run_queries(stack.address, evalset.queries, evalset.folder, whole_image=True))
        # no detection passes a score of 1: the whole photo is all that is searched
        blind = asyncio.run(run_queries(stack.address, reshots, evalset.folder, whole_image=True,
                                        min_detection_score=1.0))
    return answers, blind, evalset


@pytest.mark.parametrize("kind", sorted(MIN_LIST_RECALL1))
def test_shoppers_photos_find_their_product_first_in_the_list(evaluation, kind):
    """The list the caller reads, not only a group: the photographed product leads it."""
    answers, _, _ = evaluation
    of_kind = [a for a in answers if a.query.kind == kind]
    got = scores(of_kind, "list")
    assert got["queries"] >= SLICE_PRODUCTS
    assert got["recall1"] >= MIN_LIST_RECALL1[kind], (got, "best groups:", scores(of_kind, "object"))


def test_a_real_second_photo_finds_the_product_in_the_top_5(evaluation):
    answers, _, _ = evaluation
    got = scores([a for a in answers if a.query.kind == "second_shot"], "list")
    assert got["queries"] == 5 and got["recall5"] >= 0.8, got


def test_a_photo_in_which_nothing_is_detected_still_finds_its_product(evaluation):
    _, blind, _ = evaluation
    assert all(a.nothing_detected for a in blind)
    got = scores(blind, "list")
    assert got["recall1"] >= MIN_LIST_RECALL1["reshot"], got


def test_scene_photos_say_whether_the_catalog_holds_copies_of_their_background(evaluation):
    """The evaluation reports look-alike backgrounds apart from copied ones: the flag must match
    the photos the look-alike distractors were really cut from, and both kinds must occur."""
    answers, _, evalset = evaluation
    cut_from = set(json.loads((evalset.folder / "set.json").read_text())["background_sources"].values())
    scenes = [a.query for a in answers if a.query.kind.startswith("scene")]
    assert all(q.background for q in scenes)
    assert all(q.background_copied == (q.background in cut_from) for q in scenes)
    assert {q.background_copied for q in scenes} == {True, False}
