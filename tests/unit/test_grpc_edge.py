"""The gRPC edge in process: the real servicers, handler steps and grpc.aio server on a local
port, over fakes of Triton and Milvus. A call goes through authentication and roles,
admission, the service, status mapping, the request metrics and the audit line."""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from services.api import pb, pb_grpc
from services.search.auth import token_digest
from services.search.backends import Backends
from services.search.config import Settings
from services.search.server import SearchServer
from tests.unit.fakes import FakeStore, FakeTriton, objects, unit

PHOTO = b"photo-of-a-cup"


def requests_counted(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("vs_requests_total", {"method": method, "code": code}) or 0.0


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"callers": [
        {"name": "shop", "roles": ["search"], "token_sha256": [token_digest("t-shop").hex()]},
        {"name": "catalog", "roles": ["search", "catalog.write", "catalog.read"],
         "token_sha256": [token_digest("t-catalog").hex()]}]}))
    return path


def run_edge(policy, body, **env):
    """Start the server on a free local port with fakes behind it, run ``body(stubs, triton)``."""
    settings = Settings.from_env({"VS_LISTEN": "127.0.0.1:0", "VS_METRICS_PORT": "0", "VS_AUTH_POLICY": str(policy),
                                  **env})

    async def main():
        triton, store = FakeTriton(), FakeStore()
        triton.detections[PHOTO] = objects(("cup", 0.9, unit(1, 0, 0, 0)))
        triton.whole[PHOTO] = unit(1, 0.1, 0, 0)
        server = SearchServer(settings, Backends(triton, store))
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await body((pb_grpc.VisualSearchStub(channel), pb_grpc.CatalogStub(channel)), triton)
        finally:
            await server.stop()

    asyncio.run(main())


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def test_a_search_with_the_search_role_is_answered_and_counted(policy):
    before = requests_counted("SearchByImage", "OK")

    async def body(stubs, _triton):
        search, _ = stubs
        response = await search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        assert [g.label for g in response.objects] == ["cup", "image"]
        assert response.models.embedder == "fake-embedder"

    run_edge(policy, body)
    assert requests_counted("SearchByImage", "OK") == before + 1


@pytest.mark.parametrize("metadata, code, fragment", [
    ((), grpc.StatusCode.UNAUTHENTICATED, "no credentials"),
    (bearer("wrong"), grpc.StatusCode.UNAUTHENTICATED, "the bearer token is not valid"),
    (bearer("t-shop"), grpc.StatusCode.PERMISSION_DENIED, "lacks the role 'catalog.write'"),
])
def test_callers_without_the_role_are_refused_before_anything_runs(policy, metadata, code, fragment):
    before = requests_counted("DeleteProducts", code.name)

    async def body(stubs, triton):
        _, catalog = stubs
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["p1"]), metadata=metadata)
        assert failure.value.code() == code and fragment in failure.value.details()
        assert triton.calls == []

    run_edge(policy, body)
    assert requests_counted("DeleteProducts", code.name) == before + 1


def test_bad_input_is_invalid_argument_and_a_dead_backend_unavailable(policy):
    async def body(stubs, triton):
        search, _ = stubs
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=b"not a photo"), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        triton.down = True
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE and "Triton" in failure.value.details()

    run_edge(policy, body)


def test_past_the_in_flight_limit_a_caller_gets_resource_exhausted(policy):
    async def body(stubs, triton):
        search, _ = stubs
        triton.gate = asyncio.Event()
        held = search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        while not triton.calls:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VS_MAX_IN_FLIGHT_PER_CALLER" in failure.value.details()
        triton.gate.set()
        assert (await held).objects

    run_edge(policy, body, VS_MAX_IN_FLIGHT_PER_CALLER="1")


def test_a_catalog_write_leaves_an_audit_line_with_what_it_did(policy, caplog):
    async def body(stubs, _triton):
        _, catalog = stubs
        response = await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["p1", "p2"]),
                                                metadata=bearer("t-catalog"))
        assert response.vectors_deleted == 0

    with caplog.at_level(logging.INFO, logger="services.search.server"):
        run_edge(policy, body)
    audits = [r for r in caplog.records if getattr(r, "audit", False)]
    assert len(audits) == 1
    line = audits[0]
    assert (line.method, line.code, line.caller, line.credential) == ("DeleteProducts", "OK", "catalog", "token")
    assert line.product_ids == ["p1", "p2"] and line.vectors_deleted == 0
