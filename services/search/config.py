"""All search-service settings: environment variables with documented defaults.

Read once at start-up by ``Settings.from_env()``; a bad value stops the process with an
error naming the variable. docs/configuration.md lists the same table (a test checks it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """A setting is malformed; the message names the environment variable."""


INDEX_TYPES = ("HNSW", "FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW_SQ")
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
REFLECTION_MODES = ("on", "search", "off")


def _positive(value: float) -> bool:
    return value > 0


def _flag(raw: str) -> bool:
    if raw.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if raw.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _json_object(raw: str) -> dict:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def _setting(env: str, default: Any, help: str, parse: Callable[[str], Any] = str,  # noqa: A002
             check: Callable[[Any], bool] | None = None, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "parse": parse, "check": check,
                                            "choices": choices})


@dataclass(frozen=True)
class Settings:
    listen: str = _setting("VS_LISTEN", "127.0.0.1:50051", "gRPC listen address (host:port)")
    triton_url: str = _setting("VS_TRITON_URL", "127.0.0.1:8001", "Triton gRPC endpoint (host:port)")
    triton_timeout_s: float = _setting("VS_TRITON_TIMEOUT_S", 30.0,
                                       "upper bound of one Triton call when the caller sets no deadline",
                                       float, _positive)
    milvus_uri: str = _setting("VS_MILVUS_URI", "./data/catalog.db",
                               "a local path = embedded Milvus Lite; http://host:19530 = a Milvus server")
    milvus_token: str = _setting("VS_MILVUS_TOKEN", "", "Milvus token or user:password (a Secret in k8s)")
    milvus_collection: str = _setting("VS_MILVUS_COLLECTION", "products", "collection name")
    milvus_timeout_s: float = _setting("VS_MILVUS_TIMEOUT_S", 10.0, "upper bound of one Milvus call",
                                       float, _positive)
    milvus_shards: int = _setting("VS_MILVUS_SHARDS", 1,
                                  "shards of a collection this service creates: inserts spread over that many "
                                  "data nodes (a Milvus server only; fixed once created)", int, _positive)
    milvus_replicas: int = _setting("VS_MILVUS_REPLICAS", 1,
                                    "in-memory replicas the collection is loaded with, each on its own query "
                                    "nodes: searches spread over them and survive a node's loss (a Milvus "
                                    "server only)", int, _positive)
    index_type: str = _setting("VS_INDEX_TYPE", "HNSW", "vector index type", choices=INDEX_TYPES)
    index_params: dict = _setting("VS_INDEX_PARAMS", None, "index build parameters (JSON); default per type",
                                  _json_object)
    search_params: dict = _setting("VS_SEARCH_PARAMS", None, "search parameters (JSON); default per type",
                                   _json_object)
    consistency_level: str = _setting("VS_CONSISTENCY_LEVEL", "Bounded",
                                      "Milvus consistency of searches; writes wait until visible at this level",
                                      choices=CONSISTENCY_LEVELS)
    write_visibility_timeout_s: float = _setting("VS_WRITE_VISIBILITY_TIMEOUT_S", 30.0,
                                                 "how long an import/delete waits for its writes to be searchable",
                                                 float, _positive)
    max_image_bytes: int = _setting("VS_MAX_IMAGE_BYTES", 20 * 1024 * 1024, "largest accepted image", int,
                                    _positive)
    max_message_bytes: int = _setting("VS_MAX_MESSAGE_BYTES", 64 * 1024 * 1024,
                                      "gRPC max message size, both directions (the 4 MiB default breaks photos)",
                                      int, _positive)
    max_batch_images: int = _setting("VS_MAX_BATCH_IMAGES", 16, "images per BatchSearchByImage", int, _positive)
    max_images_per_product: int = _setting("VS_MAX_IMAGES_PER_PRODUCT", 32, "images per imported product", int,
                                           _positive)
    max_in_flight: int = _setting("VS_MAX_IN_FLIGHT", 64,
                                  "requests handled at once; more get RESOURCE_EXHAUSTED", int, _positive)
    default_top_k: int = _setting("VS_DEFAULT_TOP_K", 10, "top_k when the request gives 0", int, _positive)
    max_top_k: int = _setting("VS_MAX_TOP_K", 100, "largest accepted top_k", int, _positive)
    group_overfetch: int = _setting("VS_GROUP_OVERFETCH", 4,
                                    "vectors fetched per wanted product before collapsing per product", int,
                                    _positive)
    import_concurrency: int = _setting("VS_IMPORT_CONCURRENCY", 4, "images embedded at once per import call",
                                       int, _positive)
    import_buffer_bytes: int = _setting("VS_IMPORT_BUFFER_BYTES", 256 * 1024 * 1024,
                                        "image bytes one import call holds ahead of embedding (it reads no "
                                        "further products past it)", int, _positive)
    import_write_batch_rows: int = _setting("VS_IMPORT_WRITE_BATCH_ROWS", 1024,
                                            "rows of many products written in one Milvus upsert + delete",
                                            int, _positive)
    health_interval_s: float = _setting("VS_HEALTH_INTERVAL_S", 5.0,
                                        "seconds between dependency probes (a real inference and a Milvus query)",
                                        float, _positive)
    shutdown_grace_s: float = _setting("VS_SHUTDOWN_GRACE_S", 20.0,
                                       "on SIGTERM, time for in-flight calls to finish", float, _positive)
    metrics_port: int = _setting("VS_METRICS_PORT", 9464, "Prometheus /metrics port; 0 disables", int,
                                 lambda v: 0 <= v < 65536)
    log_level: str = _setting("VS_LOG_LEVEL", "INFO", "log level", choices=LOG_LEVELS)
    # -- security (docs/security.md) --
    tls_cert: str = _setting("VS_TLS_CERT", "", "server certificate chain (PEM file); with VS_TLS_KEY the port "
                             "speaks TLS only. Re-read when the file changes")
    tls_key: str = _setting("VS_TLS_KEY", "", "server private key (PEM file)")
    tls_client_ca: str = _setting("VS_TLS_CLIENT_CA", "", "CA bundle (PEM file): when set, callers must present a "
                                  "client certificate it signed (mutual TLS); the certificate names the caller")
    auth_policy: str = _setting("VS_AUTH_POLICY", "", "callers and their roles (JSON file, e.g. a mounted Secret); "
                                "empty = no authorization (every caller may call every method)")
    reflection: str = _setting("VS_REFLECTION", "on", "server reflection: on, search (hides the Catalog API) or off",
                               choices=REFLECTION_MODES)
    token_listen: str = _setting("VS_TOKEN_LISTEN", "", "extra host:port speaking TLS without client certificates, "
                                 "for callers with a bearer token when VS_LISTEN requires a client certificate "
                                 "(VS_TLS_CLIENT_CA); empty = none")
    allow_plaintext_tokens: bool = _setting("VS_ALLOW_PLAINTEXT_TOKENS", False,
                                            "accept bearer tokens on a plaintext port: only behind a service mesh "
                                            "that terminates TLS in front of the pod (logged at start)", _flag)
    health_listen: str = _setting("VS_HEALTH_LISTEN", "", "extra plaintext host:port serving only grpc.health.v1 "
                                  "(Kubernetes gRPC probes cannot speak TLS); empty = none")
    max_writes_in_flight: int = _setting("VS_MAX_WRITES_IN_FLIGHT", 16,
                                         "catalog writes (ImportProducts, DeleteProducts) handled at once; below "
                                         "VS_MAX_IN_FLIGHT, so import streams never take the slots searches need",
                                         int, _positive)
    max_in_flight_per_caller: int = _setting("VS_MAX_IN_FLIGHT_PER_CALLER", 32,
                                             "requests one caller (identity, or peer address without "
                                             "authorization) may have in flight; at most VS_MAX_IN_FLIGHT",
                                             int, _positive)
    store_whole_image: bool = _setting("VS_STORE_WHOLE_IMAGE", True,
                                       "store one whole-image vector per catalog image besides its objects "
                                       "(false: objects only, the whole image only when nothing is detected)",
                                       _flag)
    confident_detection_score: float = _setting(
        "VS_CONFIDENT_DETECTION_SCORE", 0.05,
        "detections of a catalog image scoring below this are not stored (mostly background and parts)",
        float, lambda v: 0 <= v <= 1)
    listed_detection_score: float = _setting(
        "VS_LISTED_DETECTION_SCORE", 0.005,
        "a query photo's detections scoring below this are searched and returned as their own groups, but "
        "not merged into the response's product list (0: every group is merged)",
        float, lambda v: 0 <= v <= 1)
    list_margin_depth: int = _setting(
        "VS_LIST_MARGIN_DEPTH", 3,
        "the product list ranks each listed match by its similarity minus that of its group's Nth product "
        "(how far it stands out where it was found: a box of background matches many products alike; "
        "N = 3 so one near-identical variant next to it does not erase its lead); 0: by similarity alone",
        int, lambda v: v >= 0)
    list_confidence_weight: float = _setting(
        "VS_LIST_CONFIDENCE_WEIGHT", 0.05,
        "the product list adds this times log10(detection score / 0.001) (0 below 0.001) to a detected "
        "object's matches: what the detector is sure of is more likely what was photographed than a faint "
        "box of background; the whole photo and a region get none. 0: off",
        float, lambda v: v >= 0)
    max_searched_objects: int = _setting(
        "VS_MAX_SEARCHED_OBJECTS", 4,
        "detected objects searched per photo (the detector's best first, as the postprocess ranks them) when "
        "the request's max_objects is 0: each is one query vector in Milvus, the capacity plan's cost driver, "
        "and Triton crops and embeds no other box of a query photo",
        int, _positive)
    shown_detection_score: float = _setting(
        "VS_SHOWN_DETECTION_SCORE", 0.25,
        "detected objects from this score are confident: returned as groups with their class name. Fainter "
        "searched objects are tentative: they feed the product list but come back (labelled \"object\") only "
        "when the request sets include_tentative_objects",
        float, lambda v: 0 <= v <= 1)
    import_idle_timeout_s: float = _setting("VS_IMPORT_IDLE_TIMEOUT_S", 30.0,
                                            "an ImportProducts stream that sends nothing for this long is closed",
                                            float, _positive)
    import_max_duration_s: float = _setting("VS_IMPORT_MAX_DURATION_S", 600.0,
                                            "the longest an ImportProducts stream may keep sending", float, _positive)
    import_max_products: int = _setting("VS_IMPORT_MAX_PRODUCTS", 1000, "products per ImportProducts call", int,
                                        _positive)
    max_connection_age_s: float = _setting("VS_MAX_CONNECTION_AGE_S", 300.0,
                                           "connections are closed (gracefully) after this long, so clients "
                                           "re-resolve DNS and reach new pods", float, _positive)
    triton_tls_ca: str = _setting("VS_TRITON_TLS_CA", "", "CA bundle (PEM) to verify Triton's certificate; "
                                  "set = TLS to Triton")
    triton_tls_cert: str = _setting("VS_TRITON_TLS_CERT", "", "client certificate (PEM) for mutual TLS to Triton")
    triton_tls_key: str = _setting("VS_TRITON_TLS_KEY", "", "client private key (PEM) for mutual TLS to Triton")
    milvus_tls_ca: str = _setting("VS_MILVUS_TLS_CA", "", "CA bundle (PEM) to verify a Milvus server's certificate "
                                  "(with an https:// VS_MILVUS_URI)")
    milvus_tls_cert: str = _setting("VS_MILVUS_TLS_CERT", "", "client certificate (PEM) for mutual TLS to Milvus")
    milvus_tls_key: str = _setting("VS_MILVUS_TLS_KEY", "", "client private key (PEM) for mutual TLS to Milvus")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, check_files: bool = True) -> Settings:
        """``check_files=False`` validates a configuration for another machine (a rendered
        manifest) without requiring its certificate and policy files here."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            meta = f.metadata
            raw = environ.get(meta["env"])
            if raw is None or raw == "":
                continue
            try:
                value = meta["parse"](raw)
            except (ValueError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{meta['env']}={raw!r}: {exc}") from None
            if meta["choices"] and value not in meta["choices"]:
                raise ConfigError(f"{meta['env']}={raw!r}: must be one of {', '.join(meta['choices'])}")
            if meta["check"] and not meta["check"](value):
                raise ConfigError(f"{meta['env']}={raw!r}: out of range")
            values[f.name] = value
        settings = cls(**values)
        settings.validate(check_files)
        return settings

    def validate(self, check_files: bool = True) -> None:
        values = {f.metadata["env"]: getattr(self, f.name) for f in fields(self)}
        for env in ("VS_LISTEN", "VS_HEALTH_LISTEN", "VS_TOKEN_LISTEN"):
            host, _, port = values[env].rpartition(":")
            if values[env] and (not host or not port.isdigit()):
                raise ConfigError(f"{env}={values[env]!r}: expected host:port")
        if self.max_image_bytes + 1024 > self.max_message_bytes:
            raise ConfigError("VS_MAX_MESSAGE_BYTES must exceed VS_MAX_IMAGE_BYTES (a request carries the image)")
        if self.max_writes_in_flight >= self.max_in_flight:
            raise ConfigError(f"VS_MAX_WRITES_IN_FLIGHT ({self.max_writes_in_flight}) must be below VS_MAX_IN_FLIGHT "
                              f"({self.max_in_flight}): the difference is kept for searches")
        if self.default_top_k > self.max_top_k:
            raise ConfigError("VS_DEFAULT_TOP_K must not exceed VS_MAX_TOP_K")
        if not self.milvus_collection.replace("_", "a").isalnum():
            raise ConfigError(f"VS_MILVUS_COLLECTION={self.milvus_collection!r}: letters, digits and _ only")
        if not self.milvus_is_server:
            for env in ("VS_MILVUS_SHARDS", "VS_MILVUS_REPLICAS"):
                if values[env] != 1:
                    raise ConfigError(f"{env}={values[env]}: Milvus Lite ({self.milvus_uri!r}) has one shard and "
                                      "one replica; more need a Milvus server URI (http://host:19530)")
        for pair in (("VS_TLS_CERT", "VS_TLS_KEY"), ("VS_TRITON_TLS_CERT", "VS_TRITON_TLS_KEY"),
                     ("VS_MILVUS_TLS_CERT", "VS_MILVUS_TLS_KEY")):
            given = [env for env in pair if values[env]]
            if len(given) == 1:
                raise ConfigError(f"{given[0]} is set but {(set(pair) - set(given)).pop()} is not: both are needed")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("VS_TLS_CLIENT_CA needs VS_TLS_CERT and VS_TLS_KEY (mutual TLS is TLS first)")
        if self.auth_policy and not self.tls and not self.allow_plaintext_tokens:
            raise ConfigError("VS_AUTH_POLICY is set but the port is plaintext (no VS_TLS_CERT / VS_TLS_KEY): bearer "
                              "tokens would cross the network in clear. Set VS_TLS_CERT and VS_TLS_KEY, or "
                              "VS_ALLOW_PLAINTEXT_TOKENS=true where a service mesh terminates TLS in front of the pod")
        if self.token_listen and not self.tls_client_ca:
            raise ConfigError("VS_TOKEN_LISTEN needs VS_TLS_CERT, VS_TLS_KEY and VS_TLS_CLIENT_CA (without a client "
                              "CA, VS_LISTEN already takes callers with a token)")
        for env, path in values.items() if check_files else ():
            if (env.endswith(("_CERT", "_KEY", "_CA")) or env == "VS_AUTH_POLICY") and path \
                    and not os.path.isfile(path):
                raise ConfigError(f"{env}={path!r}: no such file")

    @property
    def milvus_is_server(self) -> bool:
        return self.milvus_uri.startswith(("http://", "https://", "tcp://", "grpc://"))

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def effective_index_params(self) -> dict:
        if self.index_params is not None:
            return self.index_params
        return {"HNSW": {"M": 16, "efConstruction": 200}, "HNSW_SQ": {"M": 16, "efConstruction": 200},
                "IVF_FLAT": {"nlist": 1024}, "IVF_SQ8": {"nlist": 1024}}.get(self.index_type, {})

    @property
    def effective_search_params(self) -> dict:
        if self.search_params is not None:
            return self.search_params
        return {"HNSW": {"ef": 128}, "HNSW_SQ": {"ef": 128}, "IVF_FLAT": {"nprobe": 32},
                "IVF_SQ8": {"nprobe": 32}}.get(self.index_type, {})


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, for docs and manifest checks."""
    return [(f.metadata["env"], "" if f.default is None else str(f.default), f.metadata["help"])
            for f in fields(Settings)]
