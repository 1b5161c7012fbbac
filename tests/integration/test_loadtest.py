"""ghz configs resolve against the protoset; the in-repo load generator reports ghz's figures."""

from __future__ import annotations

import asyncio
import json

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from services.api import PROTOSET, pb
from tests.conftest import ROOT
from tests.integration.service_process import ServiceProcess
from tools.loadtest import run as loadtest
from tools.sample_photos import encode

CONFIGS = sorted((ROOT / "deploy" / "loadtest").glob("*.json"))


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    path = tmp_path_factory.mktemp("payload") / "search_request.bin"
    assert loadtest.main(["--write-payload", str(path)]) == 0
    return path


def resolve(pool: descriptor_pool.DescriptorPool, call: str):
    service, _, method = call.replace("/", ".").rpartition(".")
    return pool.FindServiceByName(service).methods_by_name[method]


@pytest.mark.parametrize("config_path", CONFIGS, ids=lambda p: p.name)
def test_ghz_configs_resolve_against_the_protoset(config_path, payload):
    assert PROTOSET.is_file(), "make proto builds the protoset"
    config = json.loads(config_path.read_text())
    if "protoset" in config:
        assert (config_path.parent / config["protoset"]).resolve() == PROTOSET.resolve()
    files = descriptor_pb2.FileDescriptorSet.FromString(PROTOSET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    method = resolve(pool, config["call"])
    assert method.input_type.full_name == "visualsearch.v1.SearchByImageRequest"
    assert config["binary"] is True and config["skipFirst"] > 0
    assert config["binary-file"].endswith("build/loadtest/search_request.bin")
    request = pb.SearchByImageRequest.FromString(payload.read_bytes())
    assert request.image[:3] == b"\xff\xd8\xff"  # a JPEG photo
    limit_mb = int(config["max-send-message-size"].removesuffix("MB"))
    assert limit_mb * 1024 * 1024 > len(payload.read_bytes())


def test_summary_has_ghz_figures():
    report = loadtest.Report([loadtest.Sample(0.1 * i, 0.010 + 0.001 * i, "OK") for i in range(10)]
                             + [loadtest.Sample(1.0, 0.5, "UNAVAILABLE", "UNAVAILABLE: down")], total_s=2.0)
    stats = report.summary()
    assert stats["count"] == 11 and stats["rps"] == 5.5
    assert stats["fastest_ms"] == 10.0 and stats["slowest_ms"] == 19.0  # errors are not latencies
    assert stats["status_codes"] == {"OK": 10, "UNAVAILABLE": 1}
    assert stats["errors"] == {"UNAVAILABLE: down": 1}
    text = loadtest.format_summary(stats)
    for fragment in ("Count:", "Requests/sec:", "99 % in", "[UNAVAILABLE]", "Error distribution:"):
        assert fragment in text


def test_generator_drives_the_real_service_and_plots(triton, tmp_path, photos):
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "c.db"), tmp_path / "svc.log").start()
    try:
        request = pb.SearchByImageRequest(image=encode(photos["cat"].pixels), top_k=3)
        report = asyncio.run(loadtest.run(loadtest.search_call(svc.address, request, 20), concurrency=2, count=8))
        stats = report.summary()
        assert stats["count"] == 8 and stats["status_codes"] == {"OK": 8}
        assert stats["latency_ms"]["p50"] > 0
        paths = loadtest.plot(report, tmp_path / "plots", "SearchByImage c2")
        assert all(p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    finally:
        svc.stop()
