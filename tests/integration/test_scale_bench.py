"""The scale bench's sustained load on the real Milvus server: the CPU figure the capacity plan
prices query nodes with is the server's own, and it grows with the work asked of it."""

from __future__ import annotations

import os

import numpy as np

from tools.bench import scale


def test_the_sustained_load_counts_the_servers_own_cpu_per_query_vector(milvus_server):
    from pymilvus import MilvusClient

    client = MilvusClient(milvus_server.uri, token=milvus_server.admin_token)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(4000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scale.create(client, "sustained_bench", 32, partition_key=False)
    try:
        scale.insert(client, "sustained_bench", vectors, rng.integers(0, 4, len(vectors)))
        scale.build_index(client, "sustained_bench", "HNSW", timeout_s=300)
        client.load_collection("sustained_bench", timeout=300)
        figures = scale.sustained(client, "sustained_bench", "HNSW", vectors[:64], milvus_server, nq=5, seconds=3)
    finally:
        client.drop_collection("sustained_bench")
    assert figures["calls"] > 0 and figures["calls_per_s"] == figures["calls"] / figures["seconds"]
    assert figures["server_cpu_s"] > 0  # the server's processes were found and read
    assert figures["server_core_ms_per_vector"] == figures["server_cpu_s"] * 1000 / (figures["calls"] * 5)
    # the server's CPU, not the callers': never more cores than the machine has
    assert 0 < figures["server_busy_cores"] <= os.cpu_count() * 1.05
