"""ImportProducts / DeleteProducts / GetCatalogStats logic against fakes."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

from services.api import pb
from services.search.catalog import Catalog
from services.search.errors import BackendUnavailable
from tests.unit.conftest import no_deadline
from tests.unit.fakes import objects, unit

RED, GREEN, BLUE = unit(1, 0, 0, 0), unit(0, 1, 0, 0), unit(0, 0, 1, 0)


async def stream(requests):
    for request in requests:
        yield request


def product(pid: str, *image_ids: str, category: str = "mugs", price: float = 9.5,
            contents: dict[str, bytes] | None = None) -> pb.ImportProductsRequest:
    """A product whose images' bytes are their ids, unless ``contents`` says otherwise."""
    contents = contents or {}
    return pb.ImportProductsRequest(
        product=pb.Product(product_id=pid, category=category, price=price, title=f"{pid} title",
                           attributes={"color": "red"}),
        images=[pb.ProductImage(image_id=i, content=contents.get(i, i.encode())) for i in image_ids])


def do_import(catalog, *requests):
    return asyncio.run(catalog.import_products(stream(requests), no_deadline))


def test_import_stores_one_row_per_object_with_the_product_attributes(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED), ("spoon", 0.6, GREEN))
    response = do_import(catalog, product("P", "i1"))
    assert (response.products_imported, response.vectors_written, response.images_failed) == (1, 3, 0)
    assert sorted(fake_store.rows) == ["P|i1|0", "P|i1|1", "P|i1|2"]
    stored = fake_store.rows["P|i1|1"]
    assert stored["label"] == "spoon" and stored["category"] == "mugs" and stored["price"] == 9.5
    assert stored["attributes"] == {"color": "red"} and stored["box"]["x_min"] == 10.0
    whole = fake_store.rows["P|i1|2"]  # the catalog image as a whole, besides its objects
    assert whole["label"] == "image" and whole["box"] == {"x_min": 0.0, "y_min": 0.0, "x_max": 100.0, "y_max": 80.0}
    assert fake_store.seals == 1 and fake_store.visible_waits == [{"P": {"P|i1|0", "P|i1|1", "P|i1|2"}}]
    assert fake_triton.calls == [("detect", b"i1", (None, 0.0))]  # every box the postprocess keeps, not a search's few


def test_without_whole_image_rows_only_objects_are_stored_unless_nothing_is_detected(settings, backends, fake_triton,
                                                                                  fake_store):
    catalog = Catalog(dataclasses.replace(settings, store_whole_image=False), backends)
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED), ("spoon", 0.6, GREEN))
    fake_triton.detections[b"i2"] = objects()  # nothing detected: the whole image is the only row
    response = do_import(catalog, product("P", "i1", "i2"))
    assert response.vectors_written == 3
    assert sorted(fake_store.rows) == ["P|i1|0", "P|i1|1", "P|i2|0"]
    assert [fake_store.rows[k]["label"] for k in sorted(fake_store.rows)] == ["cup", "spoon", "image"]


def test_a_failed_image_keeps_its_old_vectors_with_the_new_attributes(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    fake_triton.detections[b"i2"] = objects(("cup", 0.9, GREEN))
    do_import(catalog, product("P", "i1", "i2"))
    old_i2 = fake_store.rows["P|i2|0"]["vector"]
    # re-import: i1 re-shot, i2 replaced by undecodable bytes, new price
    fake_triton.detections[b"i1 re-shot"] = objects(("cup", 0.9, BLUE), ("cup", 0.8, GREEN))
    response = do_import(catalog, product("P", "i1", "i2", price=12.0,
                                          contents={"i1": b"i1 re-shot", "i2": b"broken"}))
    statuses = {s.image_id: s for s in response.items}
    assert statuses["i1"].status.code == 0 and statuses["i1"].vectors == 3
    assert statuses["i2"].status.code == 3 and "not a decodable image" in statuses["i2"].status.message
    assert sorted(fake_store.rows) == ["P|i1|0", "P|i1|1", "P|i1|2", "P|i2|0", "P|i2|1"]
    np.testing.assert_array_equal(fake_store.rows["P|i2|0"]["vector"], old_i2)
    assert {r["price"] for r in fake_store.rows.values()} == {12.0}


def test_images_not_sent_again_are_dropped(catalog, fake_triton, fake_store):
    for name, vec in ((b"i1", RED), (b"i2", GREEN)):
        fake_triton.detections[name] = objects(("cup", 0.9, vec))
    do_import(catalog, product("P", "i1", "i2"))
    do_import(catalog, product("P", "i2"))
    assert sorted(fake_store.rows) == ["P|i2|0", "P|i2|1"]


def test_a_product_whose_every_image_fails_changes_nothing(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    do_import(catalog, product("P", "i1"))
    before = {k: dict(v) for k, v in fake_store.rows.items()}
    response = do_import(catalog, product("P", "i1", price=99.0, contents={"i1": b"broken"}))
    assert response.products_imported == 0 and response.images_failed == 1
    assert fake_store.rows.keys() == before.keys() and fake_store.rows["P|i1|0"]["price"] == 9.5


def test_an_invalid_product_is_reported_per_image_and_others_go_through(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    response = do_import(catalog, product("bad id!", "i1"), product("Q", "i1"))
    assert [s.status.code for s in response.items] == [3, 0]
    assert "product.product_id 'bad id!' must be" in response.items[0].status.message
    assert {r["product_id"] for r in fake_store.rows.values()} == {"Q"}


def test_whole_image_and_region_modes_embed_without_detection(catalog, fake_triton, fake_store):
    fake_triton.whole[b"w"] = RED
    fake_triton.whole[b"r"] = GREEN
    request = pb.ImportProductsRequest(product=pb.Product(product_id="P"), images=[
        pb.ProductImage(image_id="w", content=b"w", mode=pb.EMBED_MODE_WHOLE_IMAGE),
        pb.ProductImage(image_id="r", content=b"r", mode=pb.EMBED_MODE_REGION,
                        region=pb.BoundingBox(x_min=1, y_min=1, x_max=5, y_max=5)),
        pb.ProductImage(image_id="n", content=b"r", mode=pb.EMBED_MODE_REGION)])
    response = do_import(catalog, request)
    assert [s.status.code for s in response.items] == [0, 0, 3]
    assert "mode REGION needs a region" in response.items[2].status.message
    assert fake_store.rows["P|w|0"]["label"] == "image" and fake_store.rows["P|r|0"]["label"] == "region"
    assert all(call[0] == "region" for call in fake_triton.calls)


def test_import_reads_ahead_only_a_bounded_number_of_image_bytes(settings, backends, fake_triton):
    catalog = Catalog(dataclasses.replace(settings, import_concurrency=2, import_buffer_bytes=250), backends)
    for i in range(20):
        fake_triton.detections[f"i{i}".ljust(100).encode()] = objects(("cup", 0.9, RED))
    consumed = []

    async def scenario():
        fake_triton.gate = asyncio.Event()

        async def requests():
            for i in range(20):
                consumed.append(i)
                yield product(f"P{i}", f"i{i}", contents={f"i{i}": f"i{i}".ljust(100).encode()})

        task = asyncio.create_task(catalog.import_products(requests(), no_deadline))
        seen, stable_since = -1, asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() - stable_since < 0.2:  # until the reading stops
            await asyncio.sleep(0.01)
            if len(consumed) != seen:
                seen, stable_since = len(consumed), asyncio.get_running_loop().time()
        read_while_blocked = len(consumed)
        fake_triton.gate.set()
        return read_while_blocked, await task

    read_while_blocked, response = asyncio.run(scenario())
    assert read_while_blocked == 3  # 100-byte images: the third one passes VS_IMPORT_BUFFER_BYTES, no more
    assert response.products_imported == 20


def test_an_import_with_triton_down_is_unavailable_and_stores_nothing(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    fake_triton.down = True
    with pytest.raises(BackendUnavailable, match="retry it"):
        do_import(catalog, product("P", "i1"))
    assert fake_store.rows == {}


def test_delete_removes_every_vector_and_waits_until_it_is_invisible(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED), ("cup", 0.5, GREEN))
    do_import(catalog, product("P", "i1"), product("Q", "i1"))
    response = asyncio.run(catalog.delete_products(pb.DeleteProductsRequest(product_ids=["P", "nobody"])))
    assert response.vectors_deleted == 3
    assert {r["product_id"] for r in fake_store.rows.values()} == {"Q"}
    assert fake_store.visible_waits[-1] == {"P": set(), "nobody": set()}


def test_stats_report_the_store_and_the_models(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    do_import(catalog, product("P", "i1"))
    stats = asyncio.run(catalog.stats())
    assert (stats.products, stats.images, stats.vectors) == (1, 1, 2)  # the cup and the whole image
    assert stats.models.detector == "fake-detector" and stats.milvus_mode == "fake"


def test_an_unchanged_image_keeps_its_vectors_without_triton_and_gets_the_new_attributes(catalog, fake_triton,
                                                                                        fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    fake_triton.detections[b"i2"] = objects(("cup", 0.9, GREEN))
    do_import(catalog, product("P", "i1", "i2"))
    vectors = {pk: list(r["vector"]) for pk, r in fake_store.rows.items()}
    fake_triton.calls.clear()
    fake_triton.detections[b"i2 new"] = objects(("cup", 0.9, BLUE))
    response = do_import(catalog, product("P", "i1", "i2", price=3.0, contents={"i2": b"i2 new"}))
    assert [(what, image) for what, image, _ in fake_triton.calls] == [("detect", b"i2 new")]  # i1 skipped
    assert {s.image_id: s.vectors for s in response.items} == {"i1": 2, "i2": 2}
    assert fake_store.rows["P|i1|0"]["vector"] == vectors["P|i1|0"]
    assert fake_store.rows["P|i2|0"]["vector"] == list(BLUE)
    assert {r["price"] for r in fake_store.rows.values()} == {3.0}
    assert fake_store.vector_reads == [["P|i1|0", "P|i1|1"]]  # only the kept rows' vectors were read back
    # sent again exactly as stored: no Triton call, no vector read, nothing written
    fake_triton.calls.clear()
    writes = len(fake_store.writes)
    response = do_import(catalog, product("P", "i1", "i2", price=3.0, contents={"i2": b"i2 new"}))
    assert response.products_imported == 1 and response.vectors_written == 4
    assert fake_triton.calls == [] and len(fake_store.writes) == writes and len(fake_store.vector_reads) == 1


def test_a_product_deleted_while_its_kept_rows_are_rewritten_is_not_brought_back(catalog, fake_triton, fake_store):
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED))
    fake_triton.detections[b"q"] = objects(("cup", 0.9, GREEN))
    do_import(catalog, product("P", "i1"), product("Q", "q"))
    read_vectors = fake_store.vectors

    def deleted_meanwhile(keys: list[str]) -> dict:
        fake_store.delete_products(["P"])  # another call deletes P between the read and the write
        return read_vectors(keys)

    fake_store.vectors = deleted_meanwhile
    response = do_import(catalog, product("P", "i1", price=4.0), product("Q", "q", price=4.0))
    assert [(s.product_id, s.status.code) for s in response.items] == [("P", 10), ("Q", 0)]  # ABORTED, OK
    assert "changed (deleted?) by another call" in response.items[0].status.message
    assert {r["product_id"] for r in fake_store.rows.values()} == {"Q"}
    assert {r["price"] for r in fake_store.rows.values()} == {4.0}


def test_tentative_detections_of_a_catalog_image_are_not_stored(catalog, fake_triton, fake_store):
    # 0.02 is under VS_CONFIDENT_DETECTION_SCORE (0.05): a part or a bit of the studio background
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, RED), ("spoon", 0.02, GREEN))
    fake_triton.detections[b"i2"] = objects(("bowl", 0.01, BLUE))
    response = do_import(catalog, product("P", "i1", "i2"))
    assert response.vectors_written == 3
    assert sorted(fake_store.rows) == ["P|i1|0", "P|i1|1", "P|i2|0"]
    assert [fake_store.rows[k]["label"] for k in sorted(fake_store.rows)] == ["cup", "image", "image"]


def test_content_keys_change_with_bytes_mode_region_either_model_the_pipeline_and_the_stored_objects():
    from services.search.catalog import content_key
    from tests.unit.fakes import MODELS

    image = pb.ProductImage(image_id="i", content=b"jpeg")
    keys = {content_key(image, MODELS),
            content_key(pb.ProductImage(image_id="i", content=b"jpeg2"), MODELS),
            content_key(pb.ProductImage(image_id="i", content=b"jpeg", mode=pb.EMBED_MODE_WHOLE_IMAGE), MODELS),
            content_key(pb.ProductImage(image_id="i", content=b"jpeg", mode=pb.EMBED_MODE_REGION,
                                        region=pb.BoundingBox(x_max=5, y_max=5)), MODELS),
            content_key(image, dataclasses.replace(MODELS, embedder_sha256="f" * 64)),
            content_key(image, dataclasses.replace(MODELS, detector_sha256="c" * 64)),
            content_key(image, dataclasses.replace(MODELS, pipeline="other settings")),
            content_key(image, MODELS, store_whole_image=False),
            content_key(image, MODELS, min_detection_score=0.05)}
    assert len(keys) == 9
    assert content_key(pb.ProductImage(image_id="other id", content=b"jpeg"), MODELS) == content_key(image, MODELS)


def test_many_products_are_written_in_few_batches_each_product_whole(settings, backends, fake_triton, fake_store):
    catalog = Catalog(dataclasses.replace(settings, import_write_batch_rows=8), backends)
    for i in range(10):
        fake_triton.detections[f"i{i}".encode()] = objects(("cup", 0.9, RED))  # 2 rows per image
    response = do_import(catalog, *[product(f"P{i}", f"i{i}") for i in range(10)])
    assert response.products_imported == 10 and len(fake_store.rows) == 20
    assert len(fake_store.writes) == 3  # 4 + 4 + 2 products, not 10 writes
    assert sorted(p for batch in fake_store.writes for p in batch) == sorted(f"P{i}" for i in range(10))


def test_stats_count_flagged_rows_one_per_product_and_per_image(catalog, fake_triton, fake_store):
    for name in (b"a", b"b", b"c"):
        fake_triton.detections[name] = objects(("cup", 0.9, RED), ("spoon", 0.5, GREEN))
    do_import(catalog, product("P", "a", "b"), product("Q", "c"))
    do_import(catalog, product("P", "b"))  # P drops image a
    stats = asyncio.run(catalog.stats())
    assert (stats.products, stats.images, stats.vectors) == (2, 2, 6)
    assert sum(r["product_head"] for r in fake_store.rows.values() if r["product_id"] == "P") == 1


def test_stored_rows_of_products_prepared_together_are_read_in_one_query(settings, backends, fake_triton,
                                                                         fake_store):
    catalog = Catalog(dataclasses.replace(settings, import_concurrency=8), backends)
    fake_store.read_seconds = 0.01
    for i in range(32):
        fake_triton.detections[f"i{i}".encode()] = objects(("cup", 0.9, RED))
    response = do_import(catalog, *[product(f"P{i}", f"i{i}") for i in range(32)])
    assert response.products_imported == 32
    assert fake_store.reads <= 8, fake_store.reads  # not one query per product
