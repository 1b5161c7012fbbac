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


def product(pid: str, *image_ids: str, category: str = "mugs", price: float = 9.5) -> pb.ImportProductsRequest:
    return pb.ImportProductsRequest(
        product=pb.Product(product_id=pid, category=category, price=price, title=f"{pid} title",
                           attributes={"color": "red"}),
        images=[pb.ProductImage(image_id=i, content=i.encode()) for i in image_ids])


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
    # re-import: i1 re-shot, i2 now undecodable, new price
    fake_triton.detections[b"i1"] = objects(("cup", 0.9, BLUE), ("cup", 0.8, GREEN))
    del fake_triton.detections[b"i2"]
    response = do_import(catalog, product("P", "i1", "i2", price=12.0))
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
    del fake_triton.detections[b"i1"]
    response = do_import(catalog, product("P", "i1", price=99.0))
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


def test_import_reads_ahead_only_a_bounded_number_of_products(settings, backends, fake_triton):
    catalog = Catalog(dataclasses.replace(settings, import_concurrency=2), backends)
    for i in range(20):
        fake_triton.detections[f"i{i}".encode()] = objects(("cup", 0.9, RED))
    consumed = []

    async def scenario():
        fake_triton.gate = asyncio.Event()

        async def requests():
            for i in range(20):
                consumed.append(i)
                yield product(f"P{i}", f"i{i}")

        task = asyncio.create_task(catalog.import_products(requests(), no_deadline))
        await asyncio.sleep(0.05)
        read_while_blocked = len(consumed)
        fake_triton.gate.set()
        return read_while_blocked, await task

    read_while_blocked, response = asyncio.run(scenario())
    assert read_while_blocked == 4  # 2 x VS_IMPORT_CONCURRENCY products in progress, no more
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
