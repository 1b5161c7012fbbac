"""The one table of catalog field limits: request validation, the Milvus schema, the proto
comments and the README ("Catalog fields") all follow it (a test checks the README).

To add a filterable product field: add it to ``Product`` (and ``Filter``) in the proto, to
``STORED_FIELDS`` here (it becomes a Milvus column), read it in
``validation.check_product`` and turn its filter into an expression in ``filters.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.search.errors import InvalidInput

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:/\-]{1,128}$")  # product_id, image_id
ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . : / -"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # attribute keys
KEY_RULE = "1-64 characters of A-Z a-z 0-9 _"


@dataclass(frozen=True)
class Limit:
    field: str
    rule: str


ID_MAX = 128
CATEGORY_MAX = 128
TITLE_MAX = 512
LABEL_MAX = 64  # detector class names stored with each vector
ATTRIBUTE_VALUE_MAX = 256
ATTRIBUTES_MAX = 32  # keys per product
PRODUCT_KEY_MAX = 300  # Milvus primary key "product|image|object"

# Stored per vector in Milvus: name -> max length (VARCHAR) or None (other types).
STORED_FIELDS: dict[str, int | None] = {
    "product_id": ID_MAX, "image_id": ID_MAX, "label": LABEL_MAX, "box": None,
    "category": CATEGORY_MAX, "price": None, "title": TITLE_MAX, "attributes": None,
}

# The limits a catalog writer sees (README "Catalog fields").
LIMITS = (
    Limit("product_id, image_id", ID_RULE),
    Limit("category", f"up to {CATEGORY_MAX} characters, may be empty"),
    Limit("title", f"up to {TITLE_MAX} characters"),
    Limit("price", "finite and >= 0"),
    Limit("attributes", f"at most {ATTRIBUTES_MAX} keys; keys {KEY_RULE}; values up to "
                        f"{ATTRIBUTE_VALUE_MAX} characters, no NUL"),
)


def check_id(value: str, what: str) -> str:
    if not ID_PATTERN.match(value):
        raise InvalidInput(f"{what} {value!r} must be {ID_RULE}")
    return value


def check_key(key: str, what: str) -> str:
    if not KEY_PATTERN.match(key):
        raise InvalidInput(f"{what} key {key!r} must be {KEY_RULE}")
    return key


def check_value(value: str, what: str) -> str:
    if len(value) > ATTRIBUTE_VALUE_MAX:
        raise InvalidInput(f"{what}: value longer than {ATTRIBUTE_VALUE_MAX} characters")
    if "\x00" in value:
        raise InvalidInput(f"{what}: value contains a NUL character")
    return value
