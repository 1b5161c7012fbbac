"""The one table of a product's stored fields. It drives the Milvus schema
(``collection.py``), request validation (``check_product``), the stored row and the match a
caller reads (``stored_values`` / ``product_values``), the structured filter
(``filters.py``), the importer's manifest columns (``manifest_values``) and docs/api.md's
"Catalog fields" table.

To add a filterable product field (docs/catalog.md, "Adding a product field"): add it to ``Product``
(and its filter to ``Filter``) in the proto, and one ``ProductField`` to ``PRODUCT_FIELDS``
below. Nothing else changes; ``tests/integration/test_product_fields.py`` proves it by adding one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from services.search.errors import InvalidInput

ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:/\-]{1,128}$")  # product_id, image_id
ID_RULE = "1-128 characters of A-Z a-z 0-9 _ . : / -"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_]{1,64}$")  # attribute keys
KEY_RULE = "1-64 characters of A-Z a-z 0-9 _"

ID_MAX = 128
LABEL_MAX = 64  # detector class names stored with each vector
ATTRIBUTE_VALUE_MAX = 256
ATTRIBUTES_MAX = 32  # keys per product
PRODUCT_KEY_MAX = 300  # Milvus primary key "product|image|object"

TEXT, NUMBER, MAP = "text", "number", "map"  # a VARCHAR, a DOUBLE (finite, >= 0), a JSON str -> str map
ANY_OF, RANGE = "any_of", "range"  # filter kinds: `Filter.<filter>` values, `Filter.min_<name>/max_<name>`


@dataclass(frozen=True)
class ProductField:
    """``name`` is the ``Product`` proto field, the Milvus column and the manifest column."""

    name: str
    kind: str
    max_length: int = 0  # TEXT only
    filter: str = ""  # ANY_OF: the repeated Filter field; RANGE: "range"; MAP: the Filter map field; "" = none
    note: str = ""  # said to catalog writers besides the limit

    @property
    def rule(self) -> str:
        if self.kind == TEXT:
            return f"up to {self.max_length} characters{', ' + self.note if self.note else ''}"
        if self.kind == NUMBER:
            return "finite and >= 0"
        return (f"at most {ATTRIBUTES_MAX} keys; keys {KEY_RULE}; values up to {ATTRIBUTE_VALUE_MAX} "
                "characters, no NUL")


PRODUCT_FIELDS: list[ProductField] = [
    ProductField("category", TEXT, 128, filter="categories", note="may be empty"),
    ProductField("price", NUMBER, filter=RANGE),
    ProductField("title", TEXT, 512),
    ProductField("attributes", MAP, filter="attributes"),
]

# What every vector's row holds besides the product's fields (the same for every product).
ROW_FIELDS: dict[str, int | None] = {"product_id": ID_MAX, "image_id": ID_MAX, "label": LABEL_MAX, "box": None}


def stored_columns() -> dict[str, tuple[str, int]]:
    """Column name -> (kind, max length) of every field a row holds and a search returns.
    ``box`` is a JSON object like a MAP."""
    columns = {name: ((TEXT, length) if length else (MAP, 0)) for name, length in ROW_FIELDS.items()}
    columns.update({f.name: (f.kind, f.max_length) for f in PRODUCT_FIELDS})
    return columns


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


def _checked(f: ProductField, value: Any) -> Any:
    what = f"product.{f.name}"
    if f.kind == TEXT:
        if len(value) > f.max_length:
            raise InvalidInput(f"{what} must be at most {f.max_length} characters, got {len(value)}")
        return str(value)
    if f.kind == NUMBER:
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(f"{what} must be finite and >= 0, got {value}")
        return float(value)
    if len(value) > ATTRIBUTES_MAX:
        raise InvalidInput(f"{what}: at most {ATTRIBUTES_MAX} keys")
    for key, item in value.items():
        check_key(key, what)
        check_value(item, f"{what}[{key!r}] (max {ATTRIBUTE_VALUE_MAX})")
    return dict(value)


def stored_values(product: Any) -> dict[str, Any]:
    """The checked values of a ``Product`` message, as its rows store them."""
    return {f.name: _checked(f, getattr(product, f.name)) for f in PRODUCT_FIELDS}


def product_values(row: dict[str, Any]) -> dict[str, Any]:
    """The ``Product`` message's fields from a stored row (what a match returns)."""
    values: dict[str, Any] = {}
    for f in PRODUCT_FIELDS:
        value = row.get(f.name)
        if f.kind == MAP:
            values[f.name] = {k: str(v) for k, v in (value or {}).items()}
        else:
            values[f.name] = value if value is not None else (0.0 if f.kind == NUMBER else "")
    return values


def manifest_values(row: dict[str, Any], where: str) -> dict[str, Any]:
    """The fields given by one manifest row (CSV or JSONL), empty cells left out; a MAP is a
    JSON object or, in CSV, ``<prefix>.<key>`` columns (``attr.`` for ``attributes``)."""
    values: dict[str, Any] = {}
    for f in PRODUCT_FIELDS:
        raw = row.get(f.name)
        if f.kind == MAP:
            prefix = "attr." if f.name == "attributes" else f"{f.name}."
            mapping = raw or {}
            if isinstance(mapping, str):
                try:
                    mapping = json.loads(mapping) if mapping.strip() else {}
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{where}: {f.name} is not a JSON object: {exc}") from None
            if not isinstance(mapping, dict):
                raise ValueError(f"{where}: {f.name} must be a JSON object")
            mapping = {**{k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v}, **mapping}
            if mapping:
                values[f.name] = {str(k): str(v) for k, v in mapping.items()}
        elif raw not in (None, ""):
            if f.kind == NUMBER:
                try:
                    values[f.name] = float(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: {f.name} {raw!r} is not a number") from None
            else:
                values[f.name] = str(raw)
    return values


def writer_limits() -> list[tuple[str, str]]:
    """(field, rule) as a catalog writer sees them (docs/api.md, "Catalog fields")."""
    return [("product_id, image_id", ID_RULE), *((f.name, f.rule) for f in PRODUCT_FIELDS)]
