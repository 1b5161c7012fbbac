"""Prometheus metrics of the search service (names are checked against deploy/ by tests)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("vs_requests_total", "gRPC requests handled, by method and status code",
                   ["method", "code"])
REQUEST_SECONDS = Histogram("vs_request_duration_seconds", "gRPC request latency, by method and status code",
                            ["method", "code"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("vs_in_flight_requests", "gRPC requests being handled now")
TRITON_SECONDS = Histogram("vs_triton_call_duration_seconds", "Triton ensemble call latency", ["model"],
                           buckets=LATENCY_BUCKETS)
MILVUS_SECONDS = Histogram("vs_milvus_call_duration_seconds", "Milvus call latency", ["operation"],
                           buckets=LATENCY_BUCKETS)
OBJECTS_PER_IMAGE = Histogram("vs_objects_per_image", "objects searched per query image",
                              buckets=(1, 2, 3, 4, 6, 8, 12, 16))
IMPORTED_IMAGES = Counter("vs_imported_images_total",
                          "catalog images imported: embedded, unchanged (stored vectors kept, no Triton call) "
                          "or failed", ["outcome"])
IMPORTED_PRODUCTS_UNCHANGED = Counter("vs_imported_products_unchanged_total",
                                      "imported products whose images and attributes were already stored "
                                      "as sent (nothing written)")
DEPENDENCY_UP = Gauge("vs_dependency_up", "1 when the last probe of a dependency succeeded", ["dependency"])

METRIC_NAMES = ("vs_requests_total", "vs_request_duration_seconds", "vs_in_flight_requests",
                "vs_triton_call_duration_seconds", "vs_milvus_call_duration_seconds",
                "vs_objects_per_image", "vs_imported_images_total",
                "vs_imported_products_unchanged_total", "vs_dependency_up")
