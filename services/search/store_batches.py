"""Milvus reads that many import calls share: the stored rows of the products being imported,
and the check that written rows are searchable, each batched over every call in flight."""

from __future__ import annotations

import asyncio
from typing import Any

from services.search.backends import Store
from services.search.coalesce import Coalescer


class StoredRows(Coalescer[str, list[dict[str, Any]]]):
    """The stored rows of the products being imported, read for many products in one Milvus
    query (products of every import call in flight)."""

    MAX_PRODUCTS = 512

    def __init__(self, store: Store) -> None:
        super().__init__(self.MAX_PRODUCTS)
        self.store = store

    def run(self, product_ids: list[str]) -> list[list[dict[str, Any]]]:
        by_product: dict[str, list[dict[str, Any]]] = {}
        for row in self.store.product_rows(sorted(set(product_ids))):
            by_product.setdefault(row["product_id"], []).append(row)
        return [by_product.get(pid, []) for pid in product_ids]


class VisibleWrites(Coalescer[dict[str, set[str]], None]):
    """Wait until the writes of import calls are searchable, many calls in one check. Calls
    whose products overlap go in different checks (each expects its own rows)."""

    MAX_PRODUCTS = 4096

    def __init__(self, store: Store) -> None:
        super().__init__(self.MAX_PRODUCTS)
        self.store = store

    def take(self) -> list[tuple[dict[str, set[str]], asyncio.Future]]:
        batch, rest, products = [], [], set()
        for item in self.queue:
            expected = item[0]
            if products.isdisjoint(expected) and (not batch or len(products) + len(expected) <= self.limit):
                batch.append(item)
                products |= expected.keys()
            else:
                rest.append(item)
        self.queue = rest
        return batch

    def run(self, items: list[dict[str, set[str]]]) -> list[None]:
        self.store.wait_visible({pid: keys for expected in items for pid, keys in expected.items()})
        return [None] * len(items)
