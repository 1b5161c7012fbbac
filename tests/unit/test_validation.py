"""Every caller-facing validation message (INVALID_ARGUMENT), without any backend."""

from __future__ import annotations

import pytest

from services.api import pb
from services.search import product_fields as pf
from services.search.config import Settings
from services.search.errors import InvalidInput
from services.search.validation import check_batch, check_delete, check_product, check_region, check_search

SETTINGS = Settings.from_env({"VS_MAX_IMAGE_BYTES": "1000"})
BOX = pb.BoundingBox


@pytest.mark.parametrize("request_, fragment", [
    (pb.SearchByImageRequest(), "image is empty"),
    (pb.SearchByImageRequest(image=b"x" * 1001),
     "image is 1001 bytes, above the limit of 1000 bytes (VS_MAX_IMAGE_BYTES)"),
    (pb.SearchByImageRequest(image=b"x", top_k=101), "top_k must be 1..100, got 101"),
    (pb.SearchByImageRequest(image=b"x", top_k=-3), "top_k must be 1..100, got -3"),
    (pb.SearchByImageRequest(image=b"x", max_objects=-1), "max_objects must be >= 0"),
    (pb.SearchByImageRequest(image=b"x", min_detection_score=1.5), "min_detection_score must be 0..1"),
    (pb.SearchByImageRequest(image=b"x", min_similarity=-2), "min_similarity must be -1..1"),
    (pb.SearchByImageRequest(image=b"x", region=BOX(x_min=5, y_min=0, x_max=5, y_max=9)),
     "region must satisfy x_max > x_min and y_max > y_min"),
    (pb.SearchByImageRequest(image=b"x", region=BOX(x_min=float("nan"), x_max=5, y_max=9)),
     "region has a non-finite coordinate"),
    (pb.SearchByImageRequest(image=b"x", filter=pb.Filter(min_price=5, max_price=1)),
     "filter.min_price (5.0) is above filter.max_price (1.0)"),
    (pb.SearchByImageRequest(image=b"x", filter=pb.Filter(attributes={"bad key": pb.AttributeValues(any_of=["a"])})),
     "filter.attributes key 'bad key' must be 1-64 characters"),
])
def test_bad_search_requests_say_what_is_wrong(request_, fragment):
    with pytest.raises(InvalidInput) as err:
        check_search(request_, SETTINGS)
    assert fragment in str(err.value)


def test_a_valid_search_request_gets_defaults():
    query = check_search(pb.SearchByImageRequest(image=b"x"), SETTINGS)
    assert query.top_k == SETTINGS.default_top_k and query.region is None and query.expression == ""
    assert check_region(BOX(x_min=1, y_min=2, x_max=3, y_max=4), "region") == (1, 2, 3, 4)


def test_batch_size_is_bounded():
    with pytest.raises(InvalidInput, match="requests must hold 1..16 images"):
        check_batch(pb.BatchSearchByImageRequest(), SETTINGS)
    with pytest.raises(InvalidInput, match="got 17"):
        check_batch(pb.BatchSearchByImageRequest(requests=[pb.SearchByImageRequest()] * 17), SETTINGS)


def _product(**fields) -> pb.ImportProductsRequest:
    images = fields.pop("images", [pb.ProductImage(image_id="main", content=b"x")])
    return pb.ImportProductsRequest(product=pb.Product(**{"product_id": "P1", **fields}), images=images)


@pytest.mark.parametrize("request_, fragment", [
    (_product(product_id=""), "product.product_id '' must be 1-128 characters of A-Z a-z 0-9 _ . : / -"),
    (_product(product_id="a b"), "product.product_id 'a b' must be"),
    (_product(product_id="x" * (pf.ID_MAX + 1)), "must be 1-128 characters"),
    (_product(category="c" * 129), "product.category must be at most 128 characters, got 129"),
    (_product(title="t" * 513), "product.title must be at most 512 characters, got 513"),
    (_product(price=-1), "product.price must be finite and >= 0, got -1"),
    (_product(price=float("inf")), "product.price must be finite and >= 0"),
    (_product(attributes={f"k{i}": "v" for i in range(pf.ATTRIBUTES_MAX + 1)}), "at most 32 keys"),
    (_product(attributes={"bad-key": "v"}), "product.attributes key 'bad-key' must be 1-64 characters"),
    (_product(attributes={"k": "v" * (pf.ATTRIBUTE_VALUE_MAX + 1)}), "value longer than 256 characters"),
    (_product(attributes={"k": "a\x00b"}), "value contains a NUL character"),
    (_product(images=[]), "a product needs 1..32 images (VS_MAX_IMAGES_PER_PRODUCT), got 0"),
    (_product(images=[pb.ProductImage(image_id="a")] * 2), "image_id values must be unique within a product"),
    (_product(images=[pb.ProductImage(image_id="a/b c")]), "image_id 'a/b c' must be"),
])
def test_bad_products_say_what_is_wrong(request_, fragment):
    with pytest.raises(InvalidInput) as err:
        check_product(request_, SETTINGS)
    assert fragment in str(err.value)


def test_a_valid_product_yields_its_stored_attributes():
    stored = check_product(_product(category="mugs", price=3, title="Mug", attributes={"color": "red"}), SETTINGS)
    assert stored == {"category": "mugs", "price": 3.0, "title": "Mug", "attributes": {"color": "red"}}


def test_delete_ids_are_bounded_and_checked():
    with pytest.raises(InvalidInput, match="product_ids must hold 1..1000 ids, got 0"):
        check_delete(pb.DeleteProductsRequest())
    with pytest.raises(InvalidInput, match="product_id 'a b' must be"):
        check_delete(pb.DeleteProductsRequest(product_ids=["ok", "a b"]))
    assert check_delete(pb.DeleteProductsRequest(product_ids=["a", "b"])) == ["a", "b"]
