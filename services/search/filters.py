"""Turn the API's structured Filter into a Milvus boolean expression, validating every part.

Callers never send expression text: keys must match a strict pattern and every value is
emitted as a JSON-escaped string literal, so no input can change the expression's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from services.search.errors import InvalidInput
from services.search.product_fields import check_key, check_value

MAX_CATEGORIES = 64
MAX_ATTRIBUTE_KEYS = 16
MAX_VALUES_PER_KEY = 64


def literal(value: str) -> str:
    """A Milvus string literal for any text (double-quoted, JSON escapes)."""
    return json.dumps(value, ensure_ascii=False)


def string_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(literal(v) for v in values) + "]"


def build_expression(flt) -> str:  # noqa: ANN001 - visualsearch.v1.Filter
    """Milvus expression for a ``visualsearch.v1.Filter``; '' when it restricts nothing."""
    parts: list[str] = []
    if len(flt.categories) > MAX_CATEGORIES:
        raise InvalidInput(f"filter.categories: at most {MAX_CATEGORIES} values")
    if flt.categories:
        values = [check_value(c, "filter.categories") for c in flt.categories]
        parts.append(f"category in {string_list(values)}")
    low = flt.min_price if flt.HasField("min_price") else None
    high = flt.max_price if flt.HasField("max_price") else None
    for name, bound in (("min_price", low), ("max_price", high)):
        if bound is not None and not math.isfinite(bound):
            raise InvalidInput(f"filter.{name} must be a finite number")
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"filter.min_price ({low}) is above filter.max_price ({high})")
    if low is not None:
        parts.append(f"price >= {float(low)!r}")
    if high is not None:
        parts.append(f"price <= {float(high)!r}")
    if len(flt.attributes) > MAX_ATTRIBUTE_KEYS:
        raise InvalidInput(f"filter.attributes: at most {MAX_ATTRIBUTE_KEYS} keys")
    for key in sorted(flt.attributes):
        check_key(key, "filter.attributes")
        values = list(flt.attributes[key].any_of)
        if not values:
            raise InvalidInput(f"filter.attributes[{key!r}].any_of is empty (it would match nothing)")
        if len(values) > MAX_VALUES_PER_KEY:
            raise InvalidInput(f"filter.attributes[{key!r}]: at most {MAX_VALUES_PER_KEY} values")
        # Milvus Lite cannot use `in` on a JSON path, so spell out the alternatives.
        terms = " or ".join(f"attributes[{literal(key)}] == {literal(check_value(v, 'filter.attributes'))}"
                            for v in values)
        parts.append(f"({terms})")
    return " and ".join(parts)
