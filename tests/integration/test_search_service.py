"""SearchByImage and the catalog API end to end: real gRPC service, real Triton, Milvus Lite."""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.api import pb
from services.search.config import Settings
from tests.integration.service_process import ServiceProcess
from tests.payloads import png_with_declared_size
from tools.models import repository
from tools.sample_photos import encode, reshoot, side_by_side
from tools.stack.demo_catalog import CATALOG, import_requests, product_for


@pytest.fixture(scope="module")
def service(triton, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    svc = ServiceProcess(triton.grpc_url, str(tmp / "catalog.db"), tmp / "service.log").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def catalog(service, photos):
    response = service.import_products(import_requests(photos))
    assert response.images_failed == 0, response
    assert response.products_imported == len(CATALOG)
    return response


def search(service, image: bytes, **kw) -> pb.SearchByImageResponse:
    return service.search.SearchByImage(pb.SearchByImageRequest(image=image, **kw), timeout=60)


def top_product(group: pb.ObjectMatches) -> str:
    assert group.matches, f"no matches for {group.label}"
    return group.matches[0].product_id


@pytest.mark.parametrize("name, background, seed", [
    ("coffee", "china", 1), ("coffee", "flower", 2), ("motorcycle_left", "flower", 3),
    ("cat", "china", 4), ("astronaut", "flower", 5),
])
def test_a_reshot_photo_finds_its_product_at_rank_1(service, catalog, photos, name, background, seed):
    shot = reshoot(photos[name], photos[background].pixels, seed=seed)
    response = search(service, encode(shot, "JPEG", quality=60), top_k=5)
    groups = [g for g in response.objects if g.label == photos[name].label]
    assert groups, [g.label for g in response.objects]
    assert top_product(groups[0]) == product_for(name)
    _, embedder = repository.installed("embedder")
    assert response.models.embedder == embedder["name"]
    assert response.models.embedding_dimension == embedder["serving"]["output"]["shape"][0]


def test_the_recommended_similarity_reaches_callers_and_applies_when_asked(service, catalog, photos):
    _, embedder = repository.installed("embedder")
    recommended = embedder["quality"]["recommended_min_similarity"]
    # a photo of nothing in the catalog: its weakest matches lie below the recommended floor
    plain = encode(photos["rocket"].pixels)
    every = search(service, plain, top_k=20)
    assert every.models.recommended_min_similarity == pytest.approx(recommended)
    assert every.models.max_detected_objects > 0 and every.models.detection_score_threshold > 0
    assert any(m.similarity < recommended for g in every.objects for m in g.matches)
    floored = search(service, plain, top_k=20, use_recommended_min_similarity=True)
    kept = [m.similarity for g in floored.objects for m in g.matches] + [m.similarity for m in floored.products]
    assert all(s >= recommended for s in kept)
    assert len(kept) < sum(len(g.matches) for g in every.objects) + len(every.products)


def test_a_photo_with_two_catalog_objects_returns_two_groups_each_finding_its_product(service, catalog, photos):
    photo = side_by_side(photos["cat"].pixels, photos["coffee"].pixels)
    response = search(service, encode(photo), top_k=3)
    by_label = {}  # the most confident box of each label (tentative boxes share labels)
    for group in sorted(response.objects, key=lambda g: g.detection_score):
        by_label[group.label] = group
    assert top_product(by_label["cat"]) == "cat-001"
    assert top_product(by_label["cup"]) == "mug-001"
    cat_box = by_label["cat"].box
    assert cat_box.x_max < photo.shape[1] / 2 + 20  # the cat is on the left half, in original pixels
    assert by_label["cup"].box.x_min > photo.shape[1] / 2 - 20


def test_several_images_of_one_product_collapse_into_its_best_match(service, catalog, photos):
    response = search(service, encode(photos["motorcycle_left"].pixels), top_k=5)
    group = next(g for g in response.objects if g.label == "motorcycle")
    ids = [m.product_id for m in group.matches]
    assert ids[0] == "moto-001" and len(ids) == len(set(ids))
    assert group.matches[0].image_id == "left" and group.matches[0].similarity > 0.99
    assert group.matches[0].product.attributes["color"] == "red"
    assert group.matches[0].product.title == "Sport motorcycle"


@pytest.mark.parametrize("flt, allowed", [
    (pb.Filter(categories=["pets", "toys"]), {"cat-001", "rocket-001"}),
    (pb.Filter(min_price=10, max_price=40), {"mug-001", "cat-001", "rocket-001", "temple-001"}),
    (pb.Filter(attributes={"color": pb.AttributeValues(any_of=["white", "pink"])}),
     {"mug-001", "suit-001", "rocket-001", "vase-001"}),
])
def test_a_filter_excludes_what_it_should(service, catalog, photos, flt, allowed):
    response = search(service, encode(photos["coffee"].pixels), top_k=10, filter=flt)
    found = {m.product_id for g in response.objects for m in g.matches}
    assert found and found <= allowed, found
    unfiltered = {m.product_id for g in search(service, encode(photos["coffee"].pixels), top_k=10).objects
                  for m in g.matches}
    assert unfiltered - allowed, "the unfiltered search must return products the filter excludes"


def test_region_search_skips_detection_and_searches_the_box(service, catalog, photos):
    photo = side_by_side(photos["cat"].pixels, photos["coffee"].pixels)
    right_half = pb.BoundingBox(x_min=photo.shape[1] / 2, y_min=0, x_max=photo.shape[1], y_max=photo.shape[0])
    response = search(service, encode(photo), top_k=3, region=right_half)
    assert len(response.objects) == 1 and response.objects[0].label == "region"
    assert top_product(response.objects[0]) == "mug-001"
    assert response.objects[0].box.x_min == pytest.approx(right_half.x_min)


def test_nothing_detected_searches_the_whole_image_and_says_so(service, catalog, photos):
    # every detection suppressed: the path of a photo in which the detector finds nothing
    response = search(service, encode(photos["rocket"].pixels), top_k=3, min_detection_score=0.99)
    assert response.whole_image_searched
    assert [g.label for g in response.objects] == ["image"]
    assert top_product(response.objects[0]) == "rocket-001"


def test_tentative_detections_feed_the_list_and_come_back_only_when_asked(service, catalog, photos):
    defaults = Settings.from_env({})
    depth = defaults.list_margin_depth
    image = encode(photos["rocket"].pixels)
    asked = search(service, image, top_k=depth, include_tentative_objects=True)  # groups as deep as the list looks
    tentative = [g for g in asked.objects if not g.whole_image]
    # the rocket is no COCO class: the detector keeps only low-scoring boxes on this photo, at
    # most VS_MAX_SEARCHED_OBJECTS of them, and their class guesses are withheld
    assert 0 < len(tentative) <= defaults.max_searched_objects
    assert all(g.tentative and g.label == "object" and g.detection_score < defaults.shown_detection_score
               and g.matches for g in tentative)
    assert not asked.whole_image_searched
    whole = asked.objects[-1]
    assert whole.whole_image and not whole.tentative and top_product(whole) == "rocket-001"
    # by default only the whole photo comes back as a group; the list is the same
    default = search(service, image, top_k=depth)
    assert [g.label for g in default.objects] == ["image"]
    assert [m.product_id for m in default.products] == [m.product_id for m in asked.products]
    # the list: each product once, from the whole photo and the listed groups, by its best lead
    # over its group's depth-th product (VS_LIST_MARGIN_DEPTH) plus its box's confidence bonus
    # (VS_LIST_CONFIDENCE_WEIGHT x log10(score / 0.001)), keeping its similarity
    best: dict[str, tuple[float, float]] = {}
    for group in asked.objects:
        if group.whole_image or group.detection_score >= defaults.listed_detection_score:
            floor = group.matches[min(depth, len(group.matches)) - 1].similarity
            bonus = 0.0 if group.whole_image else defaults.list_confidence_weight * math.log10(
                max(group.detection_score, 0.001) / 0.001)
            for m in group.matches:
                key = (m.similarity - floor + bonus, m.similarity)
                best[m.product_id] = max(best.get(m.product_id, (-2.0, -2.0)), key)
    expected = [pid for pid, _ in sorted(best.items(), key=lambda item: item[1], reverse=True)][:depth]
    assert [m.product_id for m in asked.products] == expected


def test_min_detection_score_and_max_objects_limit_the_groups(service, catalog, photos):
    full = search(service, encode(photos["coffee"].pixels))
    assert len(full.objects) >= 2
    capped = search(service, encode(photos["coffee"].pixels), max_objects=1)
    assert [g.label for g in capped.objects] == [full.objects[0].label, "image"]  # + the whole photo
    strict = search(service, encode(photos["coffee"].pixels), min_detection_score=0.99)
    assert strict.whole_image_searched and [g.label for g in strict.objects] == ["image"]


def test_min_detection_score_applies_before_max_objects(service, catalog, photos):
    # boxes come ranked by their class sum, so a faint box can rank above a surer one; a floor
    # between the two with max_objects down to the surer one's rank must keep the surer one
    image = encode(photos["coffee"].pixels)
    full = search(service, image, max_objects=99, include_tentative_objects=True)
    scores = [g.detection_score for g in full.objects if not g.whole_image]
    pairs = [(i, j) for j in range(len(scores)) for i in range(j) if scores[i] < scores[j]]
    assert pairs, f"the coffee photo's boxes come in score order {scores}: nothing to test the floor on"
    i, j = pairs[0]
    floor = (scores[i] + scores[j]) / 2
    floored = search(service, image, max_objects=j, min_detection_score=floor, include_tentative_objects=True)
    kept = [g.detection_score for g in floored.objects if not g.whole_image]
    above = [s for s in scores if s >= floor]
    # the boxes from the floor in their ranked order, the surer box j among them (box i is not)
    assert all(s >= floor for s in kept) and kept[:len(above[:j])] == pytest.approx(above[:j]), (scores, floor, kept)


def test_every_search_also_searches_the_whole_photo_and_merges_one_list(service, catalog, photos):
    photo = side_by_side(photos["cat"].pixels, photos["coffee"].pixels)
    response = search(service, encode(photo), top_k=3)
    whole = [g for g in response.objects if g.whole_image]
    assert len(whole) == 1 and response.objects[-1].whole_image and whole[0].label == "image"
    assert whole[0].box.x_max == pytest.approx(photo.shape[1], abs=1) and not response.whole_image_searched
    merged = [m.product_id for m in response.products]
    assert len(merged) == len(set(merged)) <= 3 and {"cat-001", "mug-001"} <= set(merged)
    skipped = search(service, encode(photo), top_k=3, skip_whole_image=True)
    assert not any(g.whole_image for g in skipped.objects)


def test_catalog_images_are_stored_whole_besides_their_objects(service, catalog, photos):
    # the coffee photo has detected objects (cup, spoon, ...) and is also stored as a whole
    response = search(service, encode(photos["coffee"].pixels), top_k=1)
    assert any(not g.whole_image for g in response.objects) and response.objects[-1].whole_image
    best = response.objects[-1].matches[0]
    assert best.product_id == "mug-001" and best.whole_image and best.similarity > 0.99


def test_reimporting_a_product_does_not_duplicate_it(service, catalog, photos):
    before = service.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
    again = [r for r in import_requests(photos) if r.product.product_id == "mug-001"]
    again[0].product.price = 14.0
    response = service.import_products(again)
    assert response.products_imported == 1 and response.images_failed == 0
    after = service.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert (after.products, after.images, after.vectors) == (before.products, before.images, before.vectors)
    result = search(service, encode(photos["coffee"].pixels), top_k=10)
    mugs = [m for g in result.objects for m in g.matches if m.product_id == "mug-001"]
    assert mugs and all(m.product.price == 14.0 for m in mugs)


def test_a_bad_image_fails_only_itself_and_keeps_what_was_stored(service, catalog, photos):
    before = service.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
    moto = [r for r in import_requests(photos) if r.product.product_id == "moto-001"][0]
    moto.images[1].content = b"not an image at all"  # the "right" image is now corrupt
    moto.product.attributes["color"] = "black"
    other = pb.ImportProductsRequest(product=pb.Product(product_id="bad id with spaces"),
                                     images=[pb.ProductImage(image_id="x", content=encode(photos["cat"].pixels))])
    response = service.import_products([moto, other])
    status = {(s.product_id, s.image_id): s.status for s in response.items}
    assert status[("moto-001", "left")].code == 0
    assert status[("moto-001", "right")].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not a decodable image" in status[("moto-001", "right")].message
    assert "product.product_id" in status[("bad id with spaces", "x")].message
    after = service.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
    assert after.vectors == before.vectors  # the right image's old vectors are kept
    result = search(service, encode(photos["motorcycle_right"].pixels), top_k=3)
    group = next(g for g in result.objects if g.label == "motorcycle")
    assert group.matches[0].product_id == "moto-001" and group.matches[0].image_id == "right"
    assert group.matches[0].product.attributes["color"] == "black"  # new attributes on kept vectors too


def test_delete_removes_a_product_from_results(service, catalog, photos):
    service.import_products([pb.ImportProductsRequest(
        product=pb.Product(product_id="cat-002", category="pets", price=5),
        images=[pb.ProductImage(image_id="a", content=encode(photos["cat"].pixels))])])
    assert "cat-002" in {m.product_id for g in search(service, encode(photos["cat"].pixels)).objects
                         for m in g.matches}
    deleted = service.catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["cat-002", "never-existed"]))
    assert deleted.vectors_deleted >= 1
    assert "cat-002" not in {m.product_id for g in search(service, encode(photos["cat"].pixels)).objects
                             for m in g.matches}


def test_batch_search_answers_each_image_and_fails_only_bad_ones(service, catalog, photos):
    batch = pb.BatchSearchByImageRequest(requests=[
        pb.SearchByImageRequest(image=encode(photos["cat"].pixels), top_k=1),
        pb.SearchByImageRequest(image=b"\x89PNG broken"),
        pb.SearchByImageRequest(image=encode(photos["coffee"].pixels), top_k=1),
    ])
    results = service.search.BatchSearchByImage(batch, timeout=60).results
    assert top_product(results[0].response.objects[0]) == "cat-001"
    assert results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert any(top_product(g) == "mug-001" for g in results[2].response.objects)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"image": b""}, "image is empty"),
    ({"image": b"GIF89a nope"}, "not a decodable image"),
    ({"image": "truncated"}, "truncated or corrupt"),
    ({"image": "bomb"}, "above the limit of 50000000 pixels"),
    ({"image": "huge"}, "above the limit of"),
    ({"top_k": 1000}, "top_k must be 1..100"),
    ({"filter": pb.Filter(min_price=50, max_price=10)}, "min_price"),
    ({"filter": pb.Filter(attributes={"bad key!": pb.AttributeValues(any_of=["x"])})}, "key 'bad key!'"),
    ({"filter": pb.Filter(attributes={"color": pb.AttributeValues()})}, "any_of is empty"),
    ({"filter": pb.Filter(min_price=float("nan"))}, "finite"),
    ({"region": pb.BoundingBox(x_min=10, y_min=10, x_max=5, y_max=50)}, "x_max > x_min"),
    ({"region": pb.BoundingBox(x_min=5000, y_min=5000, x_max=6000, y_max=6000)}, "outside"),
])
def test_bad_requests_get_invalid_argument_with_a_reason(service, catalog, photos, kwargs, fragment):
    good = encode(photos["coffee"].pixels)
    image = {"truncated": good[: len(good) // 3], "bomb": png_with_declared_size(30_000, 30_000),
             "huge": good + b"\x00" * (21 * 1024 * 1024)}.get(kwargs.get("image"), kwargs.get("image", good))
    with pytest.raises(grpc.RpcError) as err:
        search(service, image, **{k: v for k, v in kwargs.items() if k != "image"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in err.value.details()
    assert top_product(search(service, good, top_k=1).objects[0]) == "mug-001"  # still serving


def test_the_deadline_is_honoured(service, catalog, photos):
    with pytest.raises(grpc.RpcError) as err:
        service.search.SearchByImage(pb.SearchByImageRequest(image=encode(photos["coffee"].pixels)), timeout=0.02)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_and_reflection_resolve_method_symbols(service, catalog):
    assert service.health_status() == health_pb2.HealthCheckResponse.SERVING
    assert service.health_status("visualsearch.v1.VisualSearch") == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(service.channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="visualsearch.v1.VisualSearch.SearchByImage")]
    listed, method = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    assert {s.name for s in listed.list_services_response.service} >= {"visualsearch.v1.VisualSearch",
                                                                        "visualsearch.v1.Catalog"}
    assert method.HasField("file_descriptor_response"), method
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in method.file_descriptor_response.file_descriptor_proto]
    assert any(f.name == "visualsearch/v1/visual_search.proto" for f in files)


def test_metrics_are_exported(service, catalog):
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=5).read().decode()
    assert 'vs_requests_total{code="OK",method="SearchByImage"}' in body
    assert "vs_triton_call_duration_seconds_bucket" in body and "vs_objects_per_image_bucket" in body


def test_past_the_in_flight_limit_callers_get_resource_exhausted(triton, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "c.db"), tmp_path / "s.log", VS_MAX_IN_FLIGHT="2",
                         VS_MAX_WRITES_IN_FLIGHT="1").start()
    try:
        image = encode(np.asarray(photos["astronaut"].pixels))

        def call(_: int) -> grpc.StatusCode:
            try:
                svc.search.SearchByImage(pb.SearchByImageRequest(image=image), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                return exc.code()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(call, range(6)))
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes, codes
    finally:
        svc.stop()


@pytest.mark.parametrize("fmt, orientation", [("HEIF", 6), ("AVIF", 8), ("WEBP", 1)])
def test_phone_photo_formats_find_their_product(service, catalog, photos, fmt, orientation):
    """An iPhone HEIC (stored sideways with an EXIF rotation), an AVIF, a WebP."""
    shot = reshoot(photos["coffee"], photos["flower"].pixels, seed=11)
    response = search(service, encode(shot, fmt, quality=70, orientation=orientation), top_k=3)
    cups = [g for g in response.objects if g.label == "cup"]
    assert cups and top_product(cups[0]) == product_for("coffee")
    height, width = shot.shape[:2]
    assert all(g.box.x_max <= width + 1 and g.box.y_max <= height + 1 for g in response.objects)  # upright pixels


def test_idle_import_streams_holding_every_write_slot_never_starve_searches(triton, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "c.db"), tmp_path / "s.log", VS_MAX_IN_FLIGHT="4",
                         VS_MAX_WRITES_IN_FLIGHT="2", VS_MAX_IN_FLIGHT_PER_CALLER="4",
                         VS_IMPORT_IDLE_TIMEOUT_S="20").start()
    release = threading.Event()

    def idle_stream():
        yield import_requests(photos)[0]
        release.wait(30)  # then idles, holding its write slot

    def hold() -> grpc.StatusCode:
        while True:
            try:
                svc.catalog.ImportProducts(idle_stream(), timeout=60)
                return grpc.StatusCode.OK
            except grpc.RpcError as exc:
                # A probing delete can hold a write slot just as this stream arrives: try again.
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or release.is_set():
                    return exc.code()
                time.sleep(0.05)

    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            holders = [pool.submit(hold) for _ in range(2)]
            deadline = time.monotonic() + 30
            while True:  # both streams admitted: a third write is refused
                try:
                    svc.catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["none"]), timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
                    assert "VS_MAX_WRITES_IN_FLIGHT" in exc.details()
                    break
                assert time.monotonic() < deadline, "the idle streams never took the write slots"
                time.sleep(0.2)
            image = encode(photos["coffee"].pixels)
            for _ in range(3):  # searches still get the slots kept for them
                assert svc.search.SearchByImage(pb.SearchByImageRequest(image=image), timeout=60).objects
            release.set()
            assert [h.result() for h in holders] == [grpc.StatusCode.OK] * 2
    finally:
        release.set()
        svc.stop()
