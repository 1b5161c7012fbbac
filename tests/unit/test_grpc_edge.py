"""The gRPC edge in process: the real servicers, handler steps and grpc.aio server on a local
port, over fakes of Triton and Milvus. A call goes through authentication and roles,
admission, the service, status mapping, the request metrics and the audit line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from services.api import pb, pb_grpc
from services.search.auth import token_digest
from services.search.backends import Backends
from services.search.config import ConfigError, Settings
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


@dataclasses.dataclass
class Edge:
    search: pb_grpc.VisualSearchStub
    catalog: pb_grpc.CatalogStub
    triton: FakeTriton
    address: str


def run_edge(policy, body, replace: dict | None = None, **env):
    """Start the server on a free local port with fakes behind it, run ``body(edge)``."""
    # plaintext here, as behind a mesh that terminates TLS (the TLS ports: tests/integration/test_security.py)
    settings = Settings.from_env({"VS_LISTEN": "127.0.0.1:0", "VS_METRICS_PORT": "0", "VS_AUTH_POLICY": str(policy),
                                  "VS_ALLOW_PLAINTEXT_TOKENS": "true", **env})
    settings = dataclasses.replace(settings, **(replace or {}))

    async def main():
        triton, store = FakeTriton(), FakeStore()
        triton.detections[PHOTO] = objects(("cup", 0.9, unit(1, 0, 0, 0)))
        triton.whole[PHOTO] = unit(1, 0.1, 0, 0)
        server = SearchServer(settings, Backends(triton, store))
        await server.start()
        address = f"127.0.0.1:{server.port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                await body(Edge(pb_grpc.VisualSearchStub(channel), pb_grpc.CatalogStub(channel), triton, address))
        finally:
            await server.stop()

    asyncio.run(main())


def bearer(token: str):
    return (("authorization", f"Bearer {token}"),)


def test_a_search_with_the_search_role_is_answered_and_counted(policy):
    before = requests_counted("SearchByImage", "OK")

    async def body(edge):
        search = edge.search
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

    async def body(edge):
        catalog, triton = edge.catalog, edge.triton
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["p1"]), metadata=metadata)
        assert failure.value.code() == code and fragment in failure.value.details()
        assert triton.calls == []

    run_edge(policy, body)
    assert requests_counted("DeleteProducts", code.name) == before + 1


def test_bad_input_is_invalid_argument_and_a_dead_backend_unavailable(policy):
    async def body(edge):
        search, triton = edge.search, edge.triton
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=b"not a photo"), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        triton.down = True
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE and "Triton" in failure.value.details()

    run_edge(policy, body)


def test_past_the_in_flight_limit_a_caller_gets_resource_exhausted(policy):
    async def body(edge):
        search, triton = edge.search, edge.triton
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
    async def body(edge):
        catalog = edge.catalog
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


def test_a_token_over_plaintext_is_refused_unless_a_mesh_terminates_tls(policy):
    async def body(edge):
        search = edge.search
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-shop"))
        assert failure.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer tokens are refused over plaintext" in failure.value.details()

    # start-up refuses a token policy on a plaintext port; past that check, the port refuses tokens itself
    with pytest.raises(ConfigError, match="VS_AUTH_POLICY is set but the port is plaintext"):
        Settings.from_env({"VS_AUTH_POLICY": str(policy)})
    run_edge(policy, body, replace={"allow_plaintext_tokens": False})


def reflect(channel, **request):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async def ask():
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**request)])):
            return answer
    return ask()


def test_reflection_in_search_mode_shows_no_catalog_api(policy):
    from google.protobuf import descriptor_pb2

    async def body(edge):
        async with grpc.aio.insecure_channel(edge.address) as channel:
            services = await reflect(channel, list_services="")
            assert [s.name for s in services.list_services_response.service] == [
                "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "visualsearch.v1.VisualSearch"]
            for symbol in ("visualsearch.v1.VisualSearch", "visualsearch.v1.VisualSearch.SearchByImage"):
                answer = await reflect(channel, file_containing_symbol=symbol)
                files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
                         for raw in answer.file_descriptor_response.file_descriptor_proto]
                api = next(f for f in files if f.package == "visualsearch.v1")
                assert [s.name for s in api.service] == ["VisualSearch"]
                names = {m.name for m in api.message_type} | {e.name for e in api.enum_type}
                assert "SearchByImageRequest" in names and "Filter" in names and "ModelInfo" in names
                assert not names & {"ImportProductsRequest", "ProductImage", "EmbedMode", "CatalogStats"}
            for hidden in ("visualsearch.v1.Catalog", "visualsearch.v1.Catalog.ImportProducts",
                           "visualsearch.v1.ImportProductsRequest"):
                answer = await reflect(channel, file_containing_symbol=hidden)
                assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], hidden

    run_edge(policy, body, VS_REFLECTION="search")


def test_an_import_cut_by_the_idle_limit_audits_what_it_wrote(policy, caplog):
    async def body(edge):
        stop = asyncio.Event()

        async def products():
            yield pb.ImportProductsRequest(product=pb.Product(product_id="p1"),
                                           images=[pb.ProductImage(image_id="main", content=PHOTO)])
            await stop.wait()  # then nothing: the stream idles past VS_IMPORT_IDLE_TIMEOUT_S

        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await edge.catalog.ImportProducts(products(), metadata=bearer("t-catalog"))
        stop.set()
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "1 products received before were imported" in failure.value.details()
        found = await edge.search.SearchByImage(pb.SearchByImageRequest(image=PHOTO), metadata=bearer("t-catalog"))
        assert found.products[0].product_id == "p1"  # written, and searchable when the call ended

    with caplog.at_level(logging.INFO, logger="services.search.server"):
        run_edge(policy, body, VS_IMPORT_IDLE_TIMEOUT_S="0.3")
    audit = next(r for r in caplog.records if getattr(r, "audit", False))
    assert (audit.method, audit.code) == ("ImportProducts", "DEADLINE_EXCEEDED")
    assert (audit.products_imported, audit.vectors_written, audit.images_failed) == (1, 2, 0)
