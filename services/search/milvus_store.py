"""The Milvus collection of catalog vectors: schema, index, search, idempotent writes, stats.

The same code serves Milvus Lite (a local path URI) and any Milvus server (http://...).
pymilvus' MilvusClient is blocking, so the async service calls it in worker threads; every
call carries a timeout so a dead Milvus turns into UNAVAILABLE instead of a hang.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from services.search import product_fields as pf
from services.search.config import Settings
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.filters import string_list
from services.search.triton_client import ModelVersions

log = logging.getLogger(__name__)

OUTPUT_FIELDS = list(pf.STORED_FIELDS)
# Per row, not returned by searches: the image's content key (what an import compares to skip
# re-embedding an unchanged image) and flags on one row per product and per image (what
# GetCatalogStats counts instead of scanning every row).
CONTENT_KEY_LENGTH = 64
BOOKKEEPING_FIELDS = ("content_key", "product_head", "image_head")
# What an import reads of a product's stored rows: everything but the vector (1280 floats per
# row would travel for every product; an import fetches vectors only for the rows it rewrites).
STORED_ROW_FIELDS = ["pk", *OUTPUT_FIELDS, *BOOKKEEPING_FIELDS]
KEYS_PER_QUERY = 512  # primary keys (or product ids) per `... in [...]` expression
MAX_SEARCH_LIMIT = 16_384  # Milvus' topk ceiling


class SchemaMismatch(RuntimeError):
    """The existing collection cannot hold this embedder's vectors."""


@dataclass
class Hit:
    similarity: float
    fields: dict[str, Any]


def collection_for(alias: str, models: ModelVersions) -> str:
    """The collection of one pair of models: its name carries their sha256 (the alias
    VS_MILVUS_COLLECTION points to the one in service)."""
    key = hashlib.sha256(f"{models.detector_sha256}:{models.embedder_sha256}".encode()).hexdigest()[:16]
    return f"{alias}__{key}"


def alias_target(client: MilvusClient, alias: str, timeout: float) -> str | None:
    """The collection an alias points to; None when there is no such alias."""
    try:
        return client.describe_alias(alias, timeout=timeout)["collection_name"]
    except MilvusException:
        return None


def row_key(product_id: str, image_id: str, index: int) -> str:
    return f"{product_id}|{image_id}|{index}"


class MilvusStore:
    """The catalog collection. ``connect(dimension)`` once the embedder's dimension is known
    (the search service learns it from Triton); every other call is one Milvus request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dimension: int | None = None
        self.timeout = settings.milvus_timeout_s
        self.collection = settings.milvus_collection
        self._client: MilvusClient | None = None
        self._resolved: str | None = None  # the collection this process settled on
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        return "milvus-server" if self.settings.milvus_is_server else "milvus-lite"

    # -- connection -------------------------------------------------------------------
    def connect(self, models: ModelVersions, bind_alias: bool = True) -> None:
        """Open the client and settle on the collection of these models: the one that the
        name VS_MILVUS_COLLECTION (an alias) points to, which must have been built for these
        models; when neither exists, create it and the alias (``bind_alias=False`` creates
        only the collection: how a new model's collection is built beside the live one).
        Then check the schema and load it once. The resolved collection is kept across
        reconnects: an alias switch reaches this process when it restarts (with new models)."""
        with self._lock:
            if self._client is not None:
                return
            self.dimension = models.dimension
            uri = self.settings.milvus_uri
            if not self.settings.milvus_is_server:
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
            try:
                client = MilvusClient(uri=uri, token=self.settings.milvus_token,
                                      timeout=self.timeout, **self.tls_arguments())
                self.collection = self._resolved = self._resolve(client, models, bind_alias)
                self._check_schema(client)
                self._load(client)
            except SchemaMismatch:
                raise
            except MilvusException as exc:
                raise BackendUnavailable(f"Milvus at {uri} is unavailable: {exc.message}") from None
            except Exception as exc:  # grpc / connection errors from pymilvus internals
                raise BackendUnavailable(f"Milvus at {uri} is unavailable: {exc}") from None
            self._client = client
            log.info("milvus ready", extra={"uri": uri, "alias": self.settings.milvus_collection,
                                            "collection": self.collection, "mode": self.mode})

    def _resolve(self, client: MilvusClient, models: ModelVersions, bind_alias: bool) -> str:
        alias = self.settings.milvus_collection
        wanted = collection_for(alias, models)
        if self._resolved == wanted and client.has_collection(wanted, timeout=self.timeout):
            return wanted  # a reconnect keeps the collection this process started with
        if not bind_alias:
            if not client.has_collection(wanted, timeout=self.timeout):
                self._create(client, wanted, models)
            return wanted
        current = None
        if client.has_collection(alias, timeout=self.timeout):  # true for an alias too
            # else a plain collection of that name, made before collections per model
            current = alias_target(client, alias, self.timeout) or alias
        if current is None:
            if not client.has_collection(wanted, timeout=self.timeout):
                self._create(client, wanted, models)
            self._bind_alias(client, alias, wanted)
            return wanted
        if current != wanted:
            raise SchemaMismatch(
                f"VS_MILVUS_COLLECTION {alias!r} points to collection {current!r}, which was not built for the "
                f"models Triton serves (detector {models.detector} {models.detector_sha256[:12]}, embedder "
                f"{models.embedder} {models.embedder_sha256[:12]}; their collection is {wanted!r}). Build it and "
                f"switch {alias!r} to it without downtime: python -m services.catalog_upgrade (README, "
                "'Upgrading the models'); or set VS_MILVUS_COLLECTION to another name")
        return current

    def _bind_alias(self, client: MilvusClient, alias: str, collection: str) -> None:
        try:
            client.create_alias(collection, alias, timeout=self.timeout)
        except MilvusException as exc:
            # Milvus 2.3 keeps an alias whose collection was dropped (by hand: nothing reads
            # through it any more); a live alias made meanwhile, by a pod starting beside this
            # one, is left alone: this connect fails and the next one resolves it.
            if "alias already exist" not in exc.message or client.has_collection(alias, timeout=self.timeout):
                raise
            log.warning("alias pointed to a collection that no longer exists; pointing it to the new one",
                        extra={"alias": alias, "collection": collection})
            client.alter_alias(collection, alias, timeout=self.timeout)

    def _load(self, client: MilvusClient) -> None:
        replicas = self.settings.milvus_replicas
        try:
            client.load_collection(self.collection, replica_number=replicas, timeout=max(60.0, self.timeout))
        except MilvusException as exc:
            # Loaded already with another number (by pods with the old setting): changing it means
            # releasing the collection, a search outage that an operator chooses, not a pod start.
            if "replica number" not in exc.message:
                raise BackendUnavailable(f"Milvus could not load collection {self.collection!r} with "
                                         f"VS_MILVUS_REPLICAS={replicas}: {exc.message}") from None
            log.warning("collection loaded with another replica number than VS_MILVUS_REPLICAS; serving it as "
                        "loaded (README, 'Pointing at a Milvus cluster', says how to change it)",
                        extra={"collection": self.collection, "replicas_wanted": replicas, "milvus": exc.message})

    def tls_arguments(self) -> dict[str, Any]:
        """pymilvus' TLS arguments: one-way with a CA, mutual with a client certificate too."""
        s = self.settings
        if not s.milvus_tls_ca:
            return {}
        if s.milvus_tls_cert:
            return {"secure": True, "ca_pem_path": s.milvus_tls_ca, "client_pem_path": s.milvus_tls_cert,
                    "client_key_path": s.milvus_tls_key}
        return {"secure": True, "server_pem_path": s.milvus_tls_ca}

    def disconnect(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a broken connection must not mask the cause
                    pass
                self._client = None

    def _create(self, client: MilvusClient, name: str, models: ModelVersions) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="visual product search: one row per catalog object")
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=pf.PRODUCT_KEY_MAX)
        types = {"box": DataType.JSON, "price": DataType.DOUBLE, "attributes": DataType.JSON}
        for field_name, max_length in pf.STORED_FIELDS.items():
            if max_length is None:
                schema.add_field(field_name, types[field_name])
            else:
                schema.add_field(field_name, DataType.VARCHAR, max_length=max_length)
        schema.add_field("content_key", DataType.VARCHAR, max_length=CONTENT_KEY_LENGTH)
        schema.add_field("product_head", DataType.BOOL)
        schema.add_field("image_head", DataType.BOOL)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        index = client.prepare_index_params()
        index.add_index("vector", index_type=self.settings.index_type, metric_type="IP",
                        params=self.settings.effective_index_params)
        # Created unloaded (an index given here would load it with one replica at once), so the
        # first load has VS_MILVUS_REPLICAS.
        client.create_collection(name, schema=schema, consistency_level=self.settings.consistency_level,
                                 num_shards=self.settings.milvus_shards, timeout=self.timeout)
        client.create_index(name, index, timeout=self.timeout)
        log.info("created collection", extra={"collection": name, "dimension": self.dimension,
                                              "shards": self.settings.milvus_shards,
                                              "index_type": self.settings.index_type, "detector": models.detector,
                                              "embedder": models.embedder})

    def _check_schema(self, client: MilvusClient) -> None:
        info = client.describe_collection(self.collection, timeout=self.timeout)
        fields = {f["name"]: f for f in info["fields"]}
        missing = [name for name in ["pk", "vector", *OUTPUT_FIELDS] if name not in fields]
        if missing:
            raise SchemaMismatch(f"collection {self.collection!r} lacks fields {missing}; "
                                 "it was not created by this service (set VS_MILVUS_COLLECTION)")
        missing = [name for name in BOOKKEEPING_FIELDS if name not in fields]
        if missing:
            raise SchemaMismatch(
                f"collection {self.collection!r} lacks fields {missing}: it was made by a version without "
                "incremental imports and cheap stats; set VS_MILVUS_COLLECTION to a new name and re-import the "
                "catalog into it (docs: README, 'Importing a catalog')")
        dim = int(fields["vector"].get("params", {}).get("dim", 0))
        if dim != self.dimension:
            raise SchemaMismatch(
                f"collection {self.collection!r} holds {dim}-d vectors but the embedder produces "
                f"{self.dimension}-d ones; use another VS_MILVUS_COLLECTION or re-import the catalog")

    def client(self) -> MilvusClient:
        """The live connection, for tools that measure Milvus itself (the write benchmark's raw
        insert and index waits); the service goes through this class' methods."""
        return self._connected()

    def _connected(self) -> MilvusClient:
        if self._client is None:
            raise BackendUnavailable(f"Milvus at {self.settings.milvus_uri} is unavailable (reconnecting)")
        return self._client

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        """Any failure of a Milvus call: drop the connection (the next probe reconnects) and
        answer UNAVAILABLE."""
        try:
            yield
        except MilvusException as exc:
            self._broken(exc)
            raise BackendUnavailable(f"Milvus {what} failed: {exc.message}") from None
        except Exception as exc:  # grpc / connection errors from pymilvus internals
            self._broken(exc)
            raise BackendUnavailable(f"Milvus {what} failed: {exc}") from None

    def _broken(self, exc: Exception) -> None:
        log.warning("milvus call failed; will reconnect", extra={"error": str(exc)[:300]})
        self.disconnect()

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
                limit=min(limit, MAX_SEARCH_LIMIT), filter=expression, output_fields=OUTPUT_FIELDS,
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
                                output_fields=STORED_ROW_FIELDS, consistency_level=self.settings.consistency_level,
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
