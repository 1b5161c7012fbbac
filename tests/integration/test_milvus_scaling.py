"""VS_MILVUS_SHARDS and VS_MILVUS_REPLICAS against the real Milvus 2.3.5 standalone server
(one query node: it can hold one replica of a collection, which is what the failure case uses)."""

from __future__ import annotations

import pytest
from pymilvus import MilvusClient

from services.api import pb
from tests.integration.conftest import free_port
from tests.integration.service_process import ServiceProcess
from tools.sample_photos import encode, reshoot
from tools.stack.demo_catalog import import_requests
from tools.stack.local_stack import start_search_service, stop_process


def collection_behind(client: MilvusClient, alias: str) -> str:
    return client.describe_alias(alias)["collection_name"]


def test_shards_apply_to_a_new_collection_and_a_replica_change_leaves_a_loaded_one_serving(
        triton, milvus_server, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, milvus_server.uri, tmp_path / "sharded.log",
                         VS_MILVUS_COLLECTION="sharded", VS_MILVUS_SHARDS="2",
                         VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        assert svc.import_products(import_requests(photos)).images_failed == 0
    finally:
        svc.stop()
    client = MilvusClient(uri=milvus_server.uri, token=milvus_server.admin_token)
    name = collection_behind(client, "sharded")
    assert client.describe_collection(name)["num_shards"] == 2
    assert len(client.describe_replica(name)) == 1

    # pods restarted with another replica number find the collection loaded with one: they
    # serve it as loaded and say so, instead of failing (changing it is an operator's release)
    svc = ServiceProcess(triton.grpc_url, milvus_server.uri, tmp_path / "replicas.log",
                         VS_MILVUS_COLLECTION="sharded", VS_MILVUS_REPLICAS="2",
                         VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        shot = encode(reshoot(photos["coffee"], photos["flower"].pixels, seed=11), quality=60)
        response = svc.search.SearchByImage(pb.SearchByImageRequest(image=shot, top_k=1), timeout=60)
        assert next(g for g in response.objects if g.label == "cup").matches[0].product_id == "mug-001"
    finally:
        svc.stop()
    log = (tmp_path / "replicas.log").read_text()
    assert "another replica number than VS_MILVUS_REPLICAS" in log and '"replicas_wanted": 2' in log
    assert len(client.describe_replica(name)) == 1


def test_more_replicas_than_query_nodes_keeps_the_service_not_serving_with_the_reason(
        triton, milvus_server, tmp_path):
    log_path = tmp_path / "svc.log"
    with pytest.raises(TimeoutError) as waited:  # alive, never SERVING (an exit raises RuntimeError)
        process = start_search_service(f"127.0.0.1:{free_port()}", triton.grpc_url, milvus_server.uri, log_path,
                                       timeout_s=30, VS_MILVUS_COLLECTION="two_replicas", VS_MILVUS_REPLICAS="2",
                                       VS_HEALTH_INTERVAL_S="1", VS_METRICS_PORT="0",
                                       VS_MILVUS_TOKEN=milvus_server.service_token)
        stop_process(process)
    assert "VS_MILVUS_REPLICAS=2" in str(waited.value)
    assert "dependency not usable" in log_path.read_text()
