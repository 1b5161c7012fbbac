"""Turn the API's structured Filter into a Milvus boolean expression, validating every part.

Callers never send expression text: keys must match a strict pattern and every value is
emitted as a JSON-escaped string literal, so no input can change the expression's shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from services.search.errors import InvalidInput
from services.search.product_fields import MAP, PRODUCT_FIELDS, RANGE, check_key, check_value

MAX_CATEGORIES = 64  # values of one any-of filter (e.g. categories)
MAX_ATTRIBUTE_KEYS = 16
MAX_VALUES_PER_KEY = 64


def literal(value: str) -> str:
    """A Milvus string literal for any text (double-quoted, JSON escapes)."""
    return json.dumps(value, ensure_ascii=False)


def string_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(literal(v) for v in values) + "]"


def _any_of(name: str, values: list[str], what: str) -> str:
    if len(values) > MAX_CATEGORIES:
        raise InvalidInput(f"{what}: at most {MAX_CATEGORIES} values")
    return f"{name} in {string_list([check_value(v, what) for v in values])}"


def _range(flt, name: str) -> list[str]:  # noqa: ANN001 - visualsearch.v1.Filter
    low_field, high_field = f"min_{name}", f"max_{name}"
    low = getattr(flt, low_field) if flt.HasField(low_field) else None
    high = getattr(flt, high_field) if flt.HasField(high_field) else None
    for field_name, bound in ((low_field, low), (high_field, high)):
        if bound is not None and not math.isfinite(bound):
            raise InvalidInput(f"filter.{field_name} must be a finite number")
    if low is not None and high is not None and low > high:
        raise InvalidInput(f"filter.{low_field} ({low}) is above filter.{high_field} ({high})")
    return ([f"{name} >= {float(low)!r}"] if low is not None else []) + \
        ([f"{name} <= {float(high)!r}"] if high is not None else [])


def _map(flt, name: str, filter_name: str) -> list[str]:  # noqa: ANN001 - visualsearch.v1.Filter
    what = f"filter.{filter_name}"
    given = getattr(flt, filter_name)
    if len(given) > MAX_ATTRIBUTE_KEYS:
        raise InvalidInput(f"{what}: at most {MAX_ATTRIBUTE_KEYS} keys")
    parts = []
    for key in sorted(given):
        check_key(key, what)
        values = list(given[key].any_of)
        if not values:
            raise InvalidInput(f"{what}[{key!r}].any_of is empty (it would match nothing)")
        if len(values) > MAX_VALUES_PER_KEY:
            raise InvalidInput(f"{what}[{key!r}]: at most {MAX_VALUES_PER_KEY} values")
        # Milvus Lite cannot use `in` on a JSON path, so spell out the alternatives.
        terms = " or ".join(f"{name}[{literal(key)}] == {literal(check_value(v, what))}" for v in values)
        parts.append(f"({terms})")
    return parts


def build_expression(flt) -> str:  # noqa: ANN001 - visualsearch.v1.Filter
    """Milvus expression for a ``visualsearch.v1.Filter``; '' when it restricts nothing. Each
    filterable field of ``PRODUCT_FIELDS`` adds its part."""
    parts: list[str] = []
    for f in PRODUCT_FIELDS:
        if f.filter == RANGE:
            parts += _range(flt, f.name)
        elif f.filter and f.kind == MAP:
            parts += _map(flt, f.name, f.filter)
        elif f.filter:
            values = list(getattr(flt, f.filter))
            if values:
                parts.append(_any_of(f.name, values, f"filter.{f.filter}"))
    return " and ".join(parts)
