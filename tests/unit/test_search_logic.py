"""SearchByImage / BatchSearchByImage logic against fakes: grouping, thresholds, fallbacks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from services.api import pb
from services.search.backends import Backends
from services.search.config import Settings
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.search import Search
from tests.unit.conftest import no_deadline
from tests.unit.fakes import FakeStore, FakeTriton, objects, unit

RED, GREEN, BLUE = unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)


def row(pid: str, image_id: str, vector: np.ndarray, k: int = 0, **attrs) -> dict:
    return {"pk": f"{pid}|{image_id}|{k}", "product_id": pid, "image_id": image_id, "label": "cup",
            "box": {"x_min": 0.0, "y_min": 0.0, "x_max": 1.0, "y_max": 1.0}, "vector": vector,
            "category": attrs.get("category", ""), "price": attrs.get("price", 0.0), "title": "", "attributes": {}}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def stocked(fake_store):
    # product A: two images, one very close to RED; product B close to RED too; C is GREEN
    for r in (row("A", "a1", unit(1, 0.1, 0, 0)), row("A", "a2", unit(1, 0.3, 0, 0)),
              row("B", "b1", unit(1, 0.2, 0, 0)), row("C", "c1", GREEN)):
        fake_store.rows[r["pk"]] = r
    return fake_store


def test_several_images_of_one_product_collapse_into_its_best_match(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, RED))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=3), no_deadline))
    group, whole = response.objects
    assert not group.whole_image and whole.whole_image and whole.label == "image"
    assert [m.product_id for m in group.matches] == ["A", "B", "C"]
    assert group.matches[0].image_id == "a1"  # the closer of A's two images
    assert group.matches[0].similarity > group.matches[1].similarity > group.matches[2].similarity
    assert response.models.embedder == "fake-embedder" and response.models.embedding_dimension == 4


def test_top_k_counts_products_not_vectors(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, RED))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=2), no_deadline))
    assert [m.product_id for m in response.objects[0].matches] == ["A", "B"]


def test_min_similarity_drops_weak_matches(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, RED))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", min_similarity=0.5), no_deadline))
    assert [m.product_id for m in response.objects[0].matches] == ["A", "B"]  # C is orthogonal


def test_min_detection_score_and_max_objects_choose_the_objects(search, fake_triton, stocked):
    # in the postprocess's order, best first
    fake_triton.detections[b"photo"] = objects(("cat", 0.95, GREEN), ("bowl", 0.7, BLUE), ("cup", 0.4, RED))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", min_detection_score=0.5), no_deadline))
    assert [g.label for g in response.objects] == ["cat", "bowl", "image"]  # best first, the 0.4 cup dropped
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", max_objects=1), no_deadline))
    assert [g.label for g in response.objects] == ["cat", "image"]  # the whole photo is not an object
    assert response.objects[0].matches[0].product_id == "C"
    assert not response.whole_image_searched
    # Triton is asked to embed only the boxes a search can send: the request's, else the setting's
    # count, from the request's floor
    assert [c[2] for c in fake_triton.calls] == [(search.settings.max_searched_objects, 0.5), (1, 0.0)]


def test_the_floor_applies_before_the_best_boxes_are_chosen(search, fake_triton, stocked):
    # the postprocess ranks by the class sum, not by the score shown: a faint box can rank first
    fake_triton.detections[b"photo"] = objects(("cup", 0.3, RED), ("cat", 0.95, GREEN), ("bowl", 0.7, BLUE))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", max_objects=2, min_detection_score=0.5),
                                 no_deadline))
    # both boxes above the floor are searched: the cup under it does not take the bowl's place
    assert [g.label for g in response.objects] == ["cat", "bowl", "image"]
    assert fake_triton.calls[-1][2] == (2, 0.5)


def test_every_detection_below_the_threshold_leaves_the_whole_photo(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cup", 0.3, BLUE), whole=RED)
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", min_detection_score=0.9,
                                                         skip_whole_image=True), no_deadline))
    assert response.whole_image_searched
    (group,) = response.objects  # even when the caller skips it: there is nothing else to search
    assert group.label == "image" and group.whole_image and group.detection_score == 0
    assert group.matches[0].product_id == "A"
    assert [c[0] for c in fake_triton.calls] == ["detect"]  # one Triton call, no second one


def test_nothing_detected_is_reported_as_a_whole_image_search(search, fake_triton, stocked):
    fake_triton.detections[b"plain"] = objects(whole=GREEN)
    response = run(search.search(pb.SearchByImageRequest(image=b"plain"), no_deadline))
    assert response.whole_image_searched and response.objects[0].matches[0].product_id == "C"


def test_the_whole_photo_is_searched_in_the_same_milvus_call_unless_skipped(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cat", 0.9, GREEN), whole=RED)
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=2), no_deadline))
    assert [(g.label, g.whole_image) for g in response.objects] == [("cat", False), ("image", True)]
    assert response.objects[1].matches[0].product_id == "A" and not response.whole_image_searched
    assert len(stocked.expressions) == 1  # nq = 2 in one search
    skipped = run(search.search(pb.SearchByImageRequest(image=b"photo", skip_whole_image=True), no_deadline))
    assert [g.label for g in skipped.objects] == ["cat"]


def test_one_merged_list_ranks_each_product_once_across_groups(fake_triton, stocked, backends):
    search = Search(Settings.from_env({"VS_LIST_MARGIN_DEPTH": "0", "VS_LIST_CONFIDENCE_WEIGHT": "0"}), backends)
    fake_triton.detections[b"photo"] = objects(("cat", 0.9, unit(0, 1, 0.2, 0)), whole=unit(1, 0.1, 0, 0))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=3), no_deadline))
    merged = [(m.product_id, round(m.similarity, 4)) for m in response.products]
    # A and B come from the whole photo's group (1.0, 0.9995), C from the cat's (0.98)
    assert [pid for pid, _ in merged] == ["A", "B", "C"]
    assert merged[0][1] >= merged[1][1] >= merged[2][1]
    best = {m.product_id: max(x.similarity for g in response.objects for x in g.matches if x.product_id == m.product_id)
            for m in response.products}
    assert all(m.similarity == best[m.product_id] for m in response.products)


def test_a_faint_detection_keeps_its_group_but_stays_out_of_the_merged_list(search, fake_triton, stocked):
    # 0.003 is under VS_LISTED_DETECTION_SCORE (0.005): a background bit that matches C exactly
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, unit(1, 0.1, 0, 0)), ("cat", 0.003, GREEN),
                                               whole=BLUE)
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=1, include_tentative_objects=True),
                                 no_deadline))
    assert [g.label for g in response.objects] == ["cup", "object", "image"]  # a faint box's class is withheld
    assert [g.tentative for g in response.objects] == [False, True, False]
    assert [g.matches[0].product_id for g in response.objects[:2]] == ["A", "C"]
    assert response.objects[1].matches[0].similarity > response.objects[0].matches[0].similarity
    # C matches the tentative cat exactly, the whole photo (BLUE) not at all: the cup's A wins
    assert [m.product_id for m in response.products] == ["A"]


@pytest.mark.parametrize("listed, merged", [("0.005", {"A", "B", "C"}), ("0.05", {"A", "B"})])
def test_a_tentative_detection_joins_the_merged_list_from_the_listed_score(fake_triton, stocked, backends,
                                                                           listed, merged):
    # 0.02: under VS_CONFIDENT_DETECTION_SCORE (a catalog image would not store it), but the
    # shopper's object as often as not: listed by default
    search = Search(Settings.from_env({"VS_LISTED_DETECTION_SCORE": listed}), backends)
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, unit(1, 0.1, 0.1, 0)), ("cat", 0.02, GREEN),
                                               whole=BLUE)
    request = pb.SearchByImageRequest(image=b"photo", top_k=3, min_similarity=0.5, include_tentative_objects=True)
    response = run(search.search(request, no_deadline))
    assert [g.matches[0].product_id for g in response.objects[:2]] == ["A", "C"]
    assert {m.product_id for m in response.products} == merged  # C only through the cat's group
    request.include_tentative_objects = False  # by default the tentative cat's group is not returned
    response = run(search.search(request, no_deadline))
    assert [g.label for g in response.objects] == ["cup", "image"]
    assert {m.product_id for m in response.products} == merged  # but still feeds the list


def test_a_photo_searches_at_most_the_configured_boxes_and_shows_only_the_confident_ones(fake_triton, stocked,
                                                                                        backends):
    search = Search(Settings.from_env({"VS_MAX_SEARCHED_OBJECTS": "2", "VS_SHOWN_DETECTION_SCORE": "0.5"}),
                    backends)
    fake_triton.detections[b"photo"] = objects(("cat", 0.95, GREEN), ("bowl", 0.7, BLUE), ("cup", 0.3, RED),
                                               ("vase", 0.2, RED))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", include_tentative_objects=True),
                                 no_deadline))
    assert [g.label for g in response.objects] == ["cat", "bowl", "image"]  # two boxes searched: 3 vectors
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", max_objects=3), no_deadline))
    assert [g.label for g in response.objects] == ["cat", "bowl", "image"]  # the third box (0.3) is tentative
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", max_objects=3,
                                                         include_tentative_objects=True), no_deadline))
    assert [(g.label, g.tentative) for g in response.objects] == [("cat", False), ("bowl", False),
                                                                    ("object", True), ("image", False)]


def test_a_confident_box_leads_the_list_over_an_equally_distinct_faint_one(fake_triton, fake_store, backends):
    """VS_LIST_CONFIDENCE_WEIGHT: two boxes whose best products stand out of their groups alike;
    the one the detector is sure of (0.9) is more likely what was photographed than a 0.01 box."""
    fake_store.rows.clear()
    for pid, vector in (("SURE", unit(1, 0, 0, 0)), ("FAINT", unit(0, 1, 0, 0)), ("X", unit(0, 0, 1, 0))):
        fake_store.rows[pid] = row(pid, "i", vector)
    # the faint box matches its product a little more closely: without the bonus it would lead
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, unit(1, 0, 0.1, 0)), ("cat", 0.01, unit(0, 1, 0.05, 0)),
                                               whole=unit(0, 0, 0, 1))
    for weight, first in (("0.05", "SURE"), ("0", "FAINT")):
        search = Search(Settings.from_env({"VS_LIST_CONFIDENCE_WEIGHT": weight}), backends)
        response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=2), no_deadline))
        assert {m.product_id for m in response.products} == {"SURE", "FAINT"}
        assert response.products[0].product_id == first


def margin_store(fake_store, background: int = 12) -> None:
    """A catalog with the photographed product P and ``background`` products that all look like
    one wall: a box of that wall matches every one of them almost alike."""
    fake_store.rows.clear()
    wall = unit(0, 0, 1, 0.3)
    for i in range(background):
        fake_store.rows[f"w{i}"] = row(f"W{i:02d}", "w", unit(0, 0.01 * i, 1, 0.3 - 0.001 * i))
    fake_store.rows["p"] = row("P", "p", unit(1, 0, 0, 0))
    fake_store.rows["q"] = row("Q", "q", unit(0.8, 0.6, 0, 0))
    return wall


@pytest.mark.parametrize("depth, first", [("3", "P"), ("10", "P"), ("0", "W00")])
def test_the_list_is_led_by_the_match_that_stands_out_of_its_group_not_the_background(fake_triton, fake_store,
                                                                                       backends, depth, first):
    """VS_LIST_MARGIN_DEPTH: the wall's box matches a wall product more closely (0.9999) than the
    mug matches its product (0.95), but every wall product matches it almost as well, while the
    mug's product stands out of its own group; by similarity alone (0) the wall would lead."""
    wall = margin_store(fake_store)
    search = Search(Settings.from_env({"VS_LIST_MARGIN_DEPTH": depth, "VS_LIST_CONFIDENCE_WEIGHT": "0"}), backends)
    fake_triton.detections[b"photo"] = objects(("cup", 0.6, unit(0.95, 0.31, 0, 0)), ("wall", 0.3, wall),
                                               whole=unit(0.5, 0.1, 0.5, 0.1))
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=5), no_deadline))
    groups = {g.label: g for g in response.objects}
    assert groups["wall"].matches[0].similarity > groups["cup"].matches[0].similarity
    assert response.products[0].product_id == first
    # a match keeps its similarity (the list's order is not the similarities' when calibrated)
    listed = {m.product_id: m.similarity for m in response.products}
    assert listed.get("P", groups["cup"].matches[0].similarity) == groups["cup"].matches[0].similarity
    assert len({m.product_id for m in response.products}) == len(response.products) == 5


def test_with_only_faint_detections_the_merged_list_takes_every_group(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cat", 0.003, GREEN), whole=RED)
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=1, skip_whole_image=True),
                                 no_deadline))
    assert [(g.label, g.tentative) for g in response.objects] == [("object", True)]  # nothing else to show
    assert [m.product_id for m in response.products] == ["C"]


def test_a_given_region_skips_detection(search, fake_triton, stocked):
    fake_triton.whole[b"photo"] = GREEN
    box = pb.BoundingBox(x_min=1, y_min=2, x_max=30, y_max=40)
    response = run(search.search(pb.SearchByImageRequest(image=b"photo", region=box), no_deadline))
    assert [c[0] for c in fake_triton.calls] == ["region"] and fake_triton.calls[0][2] == (1, 2, 30, 40)
    assert response.objects[0].label == "region" and response.objects[0].box.x_max == 30


def test_the_filter_reaches_milvus_as_an_expression(search, fake_triton, stocked):
    fake_triton.detections[b"photo"] = objects(("cup", 0.9, RED))
    run(search.search(pb.SearchByImageRequest(image=b"photo", filter=pb.Filter(categories=["mugs"], max_price=20)),
                      no_deadline))
    assert stocked.expressions[-1] == 'category in ["mugs"] and price <= 20.0'


def test_one_bad_photo_fails_only_its_own_batch_result(search, fake_triton, stocked):
    fake_triton.detections[b"good"] = objects(("cup", 0.9, RED))
    request = pb.BatchSearchByImageRequest(requests=[pb.SearchByImageRequest(image=b"good"),
                                                     pb.SearchByImageRequest(image=b"garbage"),
                                                     pb.SearchByImageRequest(image=b"good", top_k=500)])
    results = run(search.batch_search(request, no_deadline)).results
    assert results[0].response.objects[0].matches[0].product_id == "A"
    assert results[1].error.code == 3 and "not a decodable image" in results[1].error.message
    assert results[2].error.code == 3 and "top_k must be 1..100" in results[2].error.message


def test_a_batch_with_every_backend_call_down_is_unavailable(search, fake_triton, stocked):
    fake_triton.down = True
    request = pb.BatchSearchByImageRequest(requests=[pb.SearchByImageRequest(image=b"a")] * 2)
    with pytest.raises(BackendUnavailable):
        run(search.batch_search(request, no_deadline))


def test_before_the_first_probe_searches_are_unavailable(settings):
    search = Search(settings, Backends(FakeTriton(), FakeStore()))
    with pytest.raises(BackendUnavailable, match="not connected"):
        run(search.search(pb.SearchByImageRequest(image=b"x"), no_deadline))


def test_an_expired_deadline_stops_before_the_backend(search, fake_triton, stocked):
    from services.search.errors import DeadlineExceeded

    fake_triton.detections[b"photo"] = objects(("cup", 0.9, RED))
    with pytest.raises(DeadlineExceeded):
        run(search.search(pb.SearchByImageRequest(image=b"photo"), lambda: 0.0))


def test_invalid_requests_never_reach_a_backend(search, fake_triton):
    with pytest.raises(InvalidInput):
        run(search.search(pb.SearchByImageRequest(image=b"photo", top_k=-1), no_deadline))
    assert fake_triton.calls == []
