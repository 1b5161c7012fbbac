"""The rows of the catalog collection: search, stats, reads, idempotent writes and waiting
until writes are searchable. Connection, schema and loading are ``collection.py``'s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.domain import ModelVersions
from services.search import product_fields as pf
from services.search.collection import BOOKKEEPING_FIELDS, MilvusCollection, output_fields
from services.search.config import Settings
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.filters import string_list

KEYS_PER_QUERY = 512  # primary keys (or product ids) per `... in [...]` expression
MAX_SEARCH_LIMIT = 16_384  # Milvus' topk ceiling


@dataclass
class Hit:
    similarity: float
    fields: dict[str, Any]


def row_key(product_id: str, image_id: str, index: int) -> str:
    return f"{product_id}|{image_id}|{index}"


class MilvusStore(MilvusCollection):
    """Every call the service makes on its rows is one Milvus request (or a few, for long key
    lists), in a worker thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.output_fields = output_fields()
        # What an import reads of a product's stored rows: everything but the vector (1280 floats
        # per row would travel for every product; an import fetches vectors only for the rows it
        # rewrites).
        self.stored_row_fields = ["pk", *self.output_fields, *BOOKKEEPING_FIELDS]

    # -- reads ------------------------------------------------------------------------
    def ping(self, models: ModelVersions) -> None:
        """Raises BackendUnavailable unless a real query on the loaded collection works."""
        if self._client is None:
            self.connect(models)
        client = self._connected()
        with self._failures("health query"):
            client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Eventually",
                         timeout=self.timeout)

    def search(self, vectors: np.ndarray, limit: int, expression: str) -> list[list[Hit]]:
        """Nearest rows for every vector in one call (nq = len(vectors))."""
        client = self._connected()
        with self._failures("search"):
            results = client.search(
                self.collection, data=[v.astype(np.float32).tolist() for v in vectors],
                limit=min(limit, MAX_SEARCH_LIMIT), filter=expression, output_fields=self.output_fields,
                search_params={"metric_type": "IP", "params": self.settings.effective_search_params},
                consistency_level=self.settings.consistency_level, timeout=self.timeout)
        return [[Hit(float(h["distance"]), h["entity"]) for h in hits] for hits in results]

    def stats(self) -> dict[str, Any]:
        """Counts of flagged rows (one per product, one per image) and of all rows: Milvus counts
        them itself, no row travels to the service, however large the catalog."""
        products, images, vectors = (self._count("product_head == true"), self._count("image_head == true"),
                                     self._count(""))
        client = self._connected()
        with self._failures("describe index"):
            index = client.describe_index(self.collection, "vector", timeout=self.timeout) or {}
        return {"products": products, "images": images, "vectors": vectors,
                "index_type": index.get("index_type", ""), "index_state": str(index.get("state", "")),
                "indexed_vectors": int(index.get("indexed_rows", 0) or 0)}

    def _count(self, expression: str) -> int:
        client = self._connected()
        with self._failures("count"):
            rows = client.query(self.collection, filter=expression, output_fields=["count(*)"],
                                consistency_level=self.settings.consistency_level, timeout=self.timeout)
        return int(rows[0]["count(*)"]) if rows else 0

    def product_rows(self, product_ids: list[str]) -> list[dict[str, Any]]:
        """The stored rows of these products without their vectors, at the configured
        consistency level: what an import compares with the new images and attributes.
        Reading a little behind is safe: a row is reused only when its content key (image
        bytes, mode, region and models) equals the new image's, and then its vectors are the
        ones a new embedding would give."""
        client = self._connected()
        with self._failures("read stored rows"):
            return client.query(self.collection, filter=f"product_id in {string_list(product_ids)}",
                                output_fields=self.stored_row_fields, consistency_level=self.settings.consistency_level,
                                timeout=self.timeout)

    def vectors(self, keys: list[str]) -> dict[str, Any]:
        """The stored vectors of these rows (primary key -> vector); a row deleted meanwhile is
        absent. A lookup by primary key, whatever the catalog's size."""
        client = self._connected()
        found: dict[str, Any] = {}
        for start in range(0, len(keys), KEYS_PER_QUERY):
            with self._failures("read stored vectors"):
                rows = client.query(self.collection, filter=f"pk in {string_list(keys[start:start + KEYS_PER_QUERY])}",
                                    output_fields=["pk", "vector"], consistency_level=self.settings.consistency_level,
                                    timeout=self.timeout)
            found.update((row["pk"], row["vector"]) for row in rows)
        return found

    # -- writes (the service serialises them) -------------------------------------------
    def replace_products(self, rows_by_product: dict[str, list[dict[str, Any]]],
                         stale_keys: list[str]) -> dict[str, set[str]]:
        """Write the rows of many products in one upsert, then delete ``stale_keys`` (their
        rows that the new ones do not replace) by primary key: no product is ever missing from
        search, and the rows of one call become visible together. Returns each product's keys."""
        rows = [row for product_rows in rows_by_product.values() for row in product_rows]
        for row in rows:
            if len(row["pk"]) > pf.PRODUCT_KEY_MAX:
                raise InvalidInput(f"product/image ids too long for a key: {row['pk'][:60]}...")
        client = self._connected()
        if rows:
            with self._failures("upsert"):
                client.upsert(self.collection, data=rows, timeout=self.timeout)
        if stale_keys:
            with self._failures("delete stale rows"):
                client.delete(self.collection, ids=stale_keys, timeout=self.timeout)
        return {pid: {row["pk"] for row in product_rows} for pid, product_rows in rows_by_product.items()}

    def delete_products(self, product_ids: list[str]) -> int:
        expression = f"product_id in {string_list(product_ids)}"
        before = self._count(expression)
        client = self._connected()
        with self._failures("delete"):
            client.delete(self.collection, filter=expression, timeout=self.timeout)
        return before

    def seal(self) -> None:
        """After an import call on Milvus Lite: move the rows from its memtable into indexed
        segments (Lite searches unsealed memtable rows one by one in Python, which grows slow
        with the catalog). A server seals on its own; flushing it after every call would only
        make small segments."""
        if not self.settings.milvus_is_server:
            client = self._connected()
            with self._failures("flush"):
                client.flush(self.collection, timeout=self.timeout)

    def wait_visible(self, expected: dict[str, set[str]]) -> None:
        """Block until searches at the configured consistency level see exactly ``expected``
        (product id -> its row keys; empty = deleted). Searches then run at that cheaper level
        (Bounded: ~2 ms on a Milvus server, Strong: ~200-300 ms) and still read every
        completed import: visibility only grows with time, on every replica."""
        if not expected:
            return
        deadline = time.monotonic() + self.settings.write_visibility_timeout_s
        ids = sorted(expected)
        # One query at Session consistency first: Milvus holds it until this process' last write
        # to the collection is readable, where polling would sleep past that moment (a few
        # hundred ms per import call) and cost the server a scan per poll.
        client = self._connected()
        with self._failures("visibility check"):
            client.query(self.collection, filter=f"product_id in {string_list(ids[:1])}", output_fields=["pk"],
                         consistency_level="Session", timeout=self.settings.write_visibility_timeout_s)
        while True:
            seen: dict[str, set[str]] = {pid: set() for pid in ids}
            for start in range(0, len(ids), KEYS_PER_QUERY):
                chunk = ids[start:start + KEYS_PER_QUERY]
                client = self._connected()
                with self._failures("visibility check"):
                    rows = client.query(self.collection, filter=f"product_id in {string_list(chunk)}",
                                        output_fields=["pk", "product_id"],
                                        consistency_level=self.settings.consistency_level, timeout=self.timeout)
                for row in rows:
                    seen[row["product_id"]].add(row["pk"])
            if seen == expected:
                return
            if time.monotonic() > deadline:
                raise BackendUnavailable(
                    f"writes are stored but not searchable after {self.settings.write_visibility_timeout_s:.0f}s "
                    "(VS_WRITE_VISIBILITY_TIMEOUT_S); Milvus is lagging. The call is idempotent: retry it")
            time.sleep(0.2)
