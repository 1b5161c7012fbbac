"""A seeded slice of the `make eval` set through the real stack with the shipped models and
settings: shoppers' photos of catalog objects must find them. Fails when quality regresses
(the thresholds sit below the full evaluation's figures in docs/evaluation.md, with room for
the slice's sampling noise)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import require
from tools import debian
from tools.cache import default_cache
from tools.eval import dataset
from tools.eval.run import import_catalog, run_queries, scores
from tools.stack.local_stack import local_stack

SLICE_PRODUCTS = 24
# This slice measured scene 0.854 (41 of 48) with the shipped settings (detections from 0.002,
# the whole image as the mean of 4 views), 0.729 (35 of 48) with the previous ones (from 0.01, one
# view) and 0.646 (31 of 48) with every box from 0.05; re-shots 1.0 with all three.
MIN_RECALL1 = {"scene": 0.77, "reshot": 0.9}


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality")
    try:
        # no look-alike distractors here: `make eval` measures them (2,000 products cut from the
        # scene photos), which no list rule holds yet (issue: the one list)
        evalset = dataset.build(folder / "set", default_cache(), max_products=SLICE_PRODUCTS, background_distractors=0)
    except debian.PackageUnavailable as exc:
        require(None, "the evaluation photos (Debian packages)", f"apt-get download must work: {exc}")
    reshots = [q for q in evalset.queries if q.kind == "reshot"]
    with local_stack(folder / "stack") as stack:
        import_catalog(stack.address, evalset.manifest)
        answers = asyncio.run(run_queries(stack.address, evalset.queries, evalset.folder, whole_image=True))
        # no detection passes a score of 1: the whole photo is all that is searched
        blind = asyncio.run(run_queries(stack.address, reshots, evalset.folder, whole_image=True,
                                        min_detection_score=1.0))
    return answers, blind


@pytest.mark.parametrize("kind", sorted(MIN_RECALL1))
def test_shoppers_photos_find_their_product_at_rank_1(evaluation, kind):
    answers, _ = evaluation
    got = scores([a for a in answers if a.query.kind == kind], "object")
    assert got["queries"] >= SLICE_PRODUCTS
    assert got["recall1"] >= MIN_RECALL1[kind], got


def test_a_reshot_catalog_photo_leads_the_merged_list(evaluation):
    """The list the caller reads, not only the group: a re-shot catalog photo is its first product."""
    answers, _ = evaluation
    got = scores([a for a in answers if a.query.kind == "reshot"], "list")
    assert got["queries"] >= SLICE_PRODUCTS and got["recall1"] >= MIN_RECALL1["reshot"], got


def test_a_real_second_photo_finds_the_product_in_the_top_5(evaluation):
    answers, _ = evaluation
    got = scores([a for a in answers if a.query.kind == "second_shot"], "list")
    assert got["queries"] == 5 and got["recall5"] >= 0.8, got


def test_a_photo_in_which_nothing_is_detected_still_finds_its_product(evaluation):
    _, blind = evaluation
    assert all(a.nothing_detected for a in blind)
    got = scores(blind, "list")
    assert got["recall1"] >= MIN_RECALL1["reshot"], got
