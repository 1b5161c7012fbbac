"""The Milvus collection's lifecycle: connection (TLS, token), the collection of the served
models and the alias in front of it, its schema (from ``product_fields``) and index, and one
load at start-up. Row operations are ``milvus_store.MilvusStore``, built on this class.

The same code serves Milvus Lite (a local path URI) and any Milvus server (http://...).
pymilvus' MilvusClient is blocking, so the async service calls it in worker threads; every
call carries a timeout so a dead Milvus turns into UNAVAILABLE instead of a hang.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from services.domain import ModelVersions
from services.search import product_fields as pf
from services.search.config import Settings
from services.search.errors import BackendUnavailable

log = logging.getLogger(__name__)

# Per row, not returned by searches: the image's content key (what an import compares to skip
# re-embedding an unchanged image) and flags on one row per product and per image (what
# GetCatalogStats counts instead of scanning every row).
CONTENT_KEY_LENGTH = 64
BOOKKEEPING_FIELDS = ("content_key", "product_head", "image_head")
COLUMN_TYPES = {pf.TEXT: DataType.VARCHAR, pf.NUMBER: DataType.DOUBLE, pf.MAP: DataType.JSON}


def output_fields() -> list[str]:
    """What a search returns per hit: every stored column but the vector and the bookkeeping."""
    return list(pf.stored_columns())


def schema(dimension: int) -> Any:
    """The collection's schema: the primary key, ``product_fields``' columns, the bookkeeping
    and the vector."""
    result = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                        description="visual product search: one row per catalog object")
    result.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=pf.PRODUCT_KEY_MAX)
    for name, (kind, max_length) in pf.stored_columns().items():
        result.add_field(name, COLUMN_TYPES[kind], **({"max_length": max_length} if kind == pf.TEXT else {}))
    result.add_field("content_key", DataType.VARCHAR, max_length=CONTENT_KEY_LENGTH)
    result.add_field("product_head", DataType.BOOL)
    result.add_field("image_head", DataType.BOOL)
    result.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    return result


class SchemaMismatch(RuntimeError):
    """The existing collection cannot hold this embedder's vectors."""


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


class MilvusCollection:
    """The catalog collection's lifecycle. ``connect(models)`` once the served models are known
    (the search service learns them from Triton)."""

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
                f"switch {alias!r} to it without downtime: python -m services.catalog_upgrade (docs/catalog.md, "
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
                        "loaded (docs/running.md says how to change it)",
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
        index = client.prepare_index_params()
        index.add_index("vector", index_type=self.settings.index_type, metric_type="IP",
                        params=self.settings.effective_index_params)
        # Created unloaded (an index given here would load it with one replica at once), so the
        # first load has VS_MILVUS_REPLICAS.
        client.create_collection(name, schema=schema(self.dimension), consistency_level=self.settings.consistency_level,
                                 num_shards=self.settings.milvus_shards, timeout=self.timeout)
        client.create_index(name, index, timeout=self.timeout)
        log.info("created collection", extra={"collection": name, "dimension": self.dimension,
                                              "shards": self.settings.milvus_shards,
                                              "index_type": self.settings.index_type, "detector": models.detector,
                                              "embedder": models.embedder})

    def _check_schema(self, client: MilvusClient) -> None:
        info = client.describe_collection(self.collection, timeout=self.timeout)
        fields = {f["name"]: f for f in info["fields"]}
        missing = [name for name in ["pk", "vector", *output_fields()] if name not in fields]
        if missing:
            raise SchemaMismatch(f"collection {self.collection!r} lacks fields {missing}; "
                                 "it was not created by this service (set VS_MILVUS_COLLECTION)")
        missing = [name for name in BOOKKEEPING_FIELDS if name not in fields]
        if missing:
            raise SchemaMismatch(
                f"collection {self.collection!r} lacks fields {missing}: it was made by a version without "
                "incremental imports and cheap stats; set VS_MILVUS_COLLECTION to a new name and re-import the "
                "catalog into it (docs/catalog.md, 'Importing a catalog')")
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
