"""One product's rows, prepared without any I/O (catalog_rows.prepare)."""

from __future__ import annotations

import numpy as np

from services.api import pb
from services.domain import WHOLE_IMAGE_LABEL
from services.search import catalog_rows
from services.search.errors import BackendUnavailable
from services.search.objects import single
from tests.unit.fakes import objects, unit

IMAGES = [pb.ProductImage(image_id="a", content=b"a"), pb.ProductImage(image_id="b", content=b"b")]
KEYS = ["key-a" + "0" * 59, "key-b" + "0" * 59]
VALUES = {"category": "bags", "price": 3.0, "title": "t", "attributes": {}}


def stored_rows() -> list[dict]:
    rows = catalog_rows.image_rows("p", "a", KEYS[0], single(np.zeros(4), unit(1, 0, 0, 0), WHOLE_IMAGE_LABEL),
                                   {**VALUES, "price": 1.0})
    rows += catalog_rows.image_rows("p", "b", KEYS[1], single(np.zeros(4), unit(0, 1, 0, 0), WHOLE_IMAGE_LABEL),
                                    {**VALUES, "price": 1.0})
    return [{k: v for k, v in row.items() if k != "vector"} for row in catalog_rows.flag_heads(rows)]


def test_an_embedded_image_gets_one_row_per_kept_object_and_the_flags():
    found = objects(("cup", 0.9, unit(1, 0, 0, 0)))
    prepared = catalog_rows.prepare("p", IMAGES[:1], KEYS[:1], VALUES, [], {"a": found})
    assert [r["pk"] for r in prepared.rows] == ["p|a|0", "p|a|1"]
    assert [r["label"] for r in prepared.rows] == ["cup", WHOLE_IMAGE_LABEL]
    assert [r["product_head"] for r in prepared.rows] == [True, False]
    assert prepared.statuses[0].vectors == 2 and prepared.statuses[0].status.code == 0


def test_an_unchanged_image_keeps_its_rows_with_the_new_values_and_a_failed_one_keeps_its_old_rows():
    failed = BackendUnavailable("Triton down")
    prepared = catalog_rows.prepare("p", IMAGES, KEYS, VALUES, stored_rows(), {"b": failed})
    assert {r["pk"]: r["price"] for r in prepared.rows} == {"p|a|0": 3.0, "p|b|0": 3.0}
    assert all("vector" not in r for r in prepared.rows)  # read back only if the product is written
    codes = {s.image_id: s.status.code for s in prepared.statuses}
    assert codes == {"a": 0, "b": BackendUnavailable.code.value[0]} and not prepared.stale


def test_a_product_whose_every_image_failed_writes_nothing_and_one_sent_as_stored_neither():
    failed = BackendUnavailable("Triton down")
    assert catalog_rows.prepare("p", IMAGES, KEYS, VALUES, stored_rows(), {"a": failed, "b": failed}).rows == []
    same = catalog_rows.prepare("p", IMAGES, KEYS, {**VALUES, "price": 1.0}, stored_rows(), {})
    assert same.rows == [] and same.unchanged


def test_rows_a_new_import_drops_are_stale():
    prepared = catalog_rows.prepare("p", IMAGES[:1], KEYS[:1], VALUES, stored_rows(), {})
    assert prepared.stale == ["p|b|0"]
