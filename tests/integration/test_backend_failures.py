"""Dead backends and shutdown: the real Milvus server, a Triton we stop, SIGTERM while busy.

Also proves the server URI path: the same code against a real Milvus standalone server.
"""

from __future__ import annotations

import concurrent.futures
import signal
import time

import grpc
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2

from services.api import pb
from services.search import triton_client as tc
from tests.integration.conftest import REPOSITORY, free_port
from tests.integration.service_process import ServiceProcess
from tools.sample_photos import encode, reshoot
from tools.stack.demo_catalog import import_requests
from tools.stack.milvus_processes import MilvusLiteServer
from tools.stack.triton_launcher import TritonServer

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def timed_search(svc: ServiceProcess, image: bytes) -> tuple[grpc.StatusCode, str, float]:
    start = time.monotonic()
    try:
        svc.search.SearchByImage(pb.SearchByImageRequest(image=image), timeout=60)
        return grpc.StatusCode.OK, "", time.monotonic() - start
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), time.monotonic() - start


def test_milvus_server_uri_import_search_hang_and_recovery(triton, milvus_server, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, milvus_server.uri, tmp_path / "svc.log",
                         VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        imported = svc.import_products(import_requests(photos))
        assert imported.images_failed == 0
        stats = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert stats.milvus_mode == "milvus-server" and stats.products == 7
        shot = encode(reshoot(photos["coffee"], photos["flower"].pixels, seed=11), quality=60)
        assert timed_search(svc, shot)[0] == grpc.StatusCode.OK

        milvus_server.pause()  # hung: every call waits until VS_MILVUS_TIMEOUT_S (5 s here)
        try:
            code, details, elapsed = timed_search(svc, shot)
            assert code == grpc.StatusCode.UNAVAILABLE and "Milvus" in details
            assert elapsed < 15, f"UNAVAILABLE took {elapsed:.1f}s"
            svc.wait_health(NOT_SERVING, 30)
        finally:
            milvus_server.resume()
        svc.wait_health(SERVING, 120)  # recovered without restarting the service
        response = svc.search.SearchByImage(pb.SearchByImageRequest(image=shot, top_k=1), timeout=60)
        cup = next(g for g in response.objects if g.label == "cup")
        assert cup.matches[0].product_id == "mug-001"
        after = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert (after.products, after.vectors) == (stats.products, stats.vectors)  # nothing lost
    finally:
        svc.stop()


def detect_calls(triton) -> int:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    stats = client.get_inference_statistics(tc.DETECT_ENSEMBLE, as_json=True)
    return int(stats["model_stats"][0]["inference_stats"]["success"].get("count", 0))


def test_a_milvus_server_catalog_reimported_unchanged_skips_triton_and_keeps_its_vectors(triton, milvus_server,
                                                                                        tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, milvus_server.uri, tmp_path / "svc.log",
                         VS_MILVUS_COLLECTION="incremental", VS_MILVUS_TOKEN=milvus_server.service_token).start()
    try:
        items = import_requests(photos)
        first = svc.import_products(items)
        shot = encode(reshoot(photos["coffee"], photos["flower"].pixels, seed=11), quality=60)
        expected = svc.search.SearchByImage(pb.SearchByImageRequest(image=shot, top_k=3), timeout=60)
        before = detect_calls(triton)  # a search runs the detection ensemble too
        again = svc.import_products(items)  # the same catalog: nothing to embed, nothing to write
        assert detect_calls(triton) == before
        assert (again.products_imported, again.vectors_written) == (first.products_imported, first.vectors_written)
        # one product's price changes and one image is new: only that image is embedded
        changed = [pb.ImportProductsRequest.FromString(item.SerializeToString()) for item in items]
        changed[0].product.price += 1
        changed[1].images[0].content = encode(photos["cat"].pixels, quality=80)
        svc.import_products(changed)
        assert detect_calls(triton) == before + 1
        stats = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert (stats.products, stats.images) == (len(items), sum(len(i.images) for i in items))
        after = svc.search.SearchByImage(pb.SearchByImageRequest(image=shot, top_k=3), timeout=60)
        cup = next(g for g in after.objects if g.label == "cup")
        assert cup.matches[0].product_id == "mug-001"
        assert cup.matches[0].similarity == pytest.approx(
            next(g for g in expected.objects if g.label == "cup").matches[0].similarity, abs=1e-5)
    finally:
        svc.stop()


def test_milvus_killed_is_unavailable_quickly_and_recovers_with_data(triton, tmp_path, photos):
    milvus = MilvusLiteServer(tmp_path / "lite-data").start()
    svc = ServiceProcess(triton.grpc_url, milvus.uri, tmp_path / "svc.log").start()
    try:
        svc.import_products(import_requests(photos)[:3])
        before = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        image = encode(photos["coffee"].pixels)
        milvus.kill()
        code, details, elapsed = timed_search(svc, image)
        assert code == grpc.StatusCode.UNAVAILABLE and "Milvus" in details
        assert elapsed < 10, f"UNAVAILABLE took {elapsed:.1f}s"
        svc.wait_health(NOT_SERVING, 30)
        with pytest.raises(grpc.RpcError) as err:
            svc.import_products(import_requests(photos)[3:4])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        milvus.start()
        svc.wait_health(SERVING, 180)
        after = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert (after.products, after.vectors) == (before.products, before.vectors)
        response = svc.search.SearchByImage(pb.SearchByImageRequest(image=image, top_k=1), timeout=60)
        assert next(g for g in response.objects if g.label == "cup").matches[0].product_id == "mug-001"
    finally:
        svc.stop()
        milvus.stop()


def test_triton_down_is_unavailable_quickly_and_recovers_without_restart(tmp_path, photos):
    ports = (free_port(), free_port(), free_port())
    triton = TritonServer(REPOSITORY, *ports, log_path=tmp_path / "triton.log").start()
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "svc.log").start()
    try:
        svc.import_products(import_requests(photos)[:2])
        image = encode(photos["coffee"].pixels)
        assert timed_search(svc, image)[0] == grpc.StatusCode.OK

        triton.stop()
        code, details, elapsed = timed_search(svc, image)
        assert code == grpc.StatusCode.UNAVAILABLE and "Triton" in details
        assert elapsed < 10, f"UNAVAILABLE took {elapsed:.1f}s"
        svc.wait_health(NOT_SERVING, 30)
        with pytest.raises(grpc.RpcError) as err:
            svc.import_products(import_requests(photos)[2:3])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in err.value.details()

        triton = TritonServer(REPOSITORY, *ports, log_path=tmp_path / "triton2.log").start()
        svc.wait_health(SERVING, 60)
        assert timed_search(svc, image)[0] == grpc.StatusCode.OK
        stats = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert stats.products == 2  # the failed import wrote nothing; earlier ones are intact
    finally:
        svc.stop()
        triton.stop()


def test_sigterm_drains_in_flight_calls_and_stops_serving(triton, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "svc.log").start()
    svc.import_products(import_requests(photos)[:1])
    image = encode(photos["astronaut"].pixels)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(timed_search, svc, image) for _ in range(4)]
        time.sleep(0.15)  # the calls are in flight
        svc.process.send_signal(signal.SIGTERM)
        results = [c.result() for c in calls]
    assert [r[0] for r in results] == [grpc.StatusCode.OK] * 4, results
    assert svc.process.wait(30) == 0
    assert '"message": "draining"' in svc.log_path.read_text()
