"""The real ghz and grpcurl against the service through server reflection alone (no proto
file), and `make loadtest`'s ghz engine. Skipped, with the reason, where the binaries are absent."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from services.api import pb
from tests.conftest import require
from tests.integration.service_process import ServiceProcess
from tools.loadtest import ghz
from tools.loadtest import run as generator
from tools.sample_photos import encode, reshoot
from tools.stack.demo_catalog import import_requests


def need(tool: str) -> str:
    return require(ghz.find(tool), f"the real {tool}", f"install {tool} or set VS_{tool.upper()}",
                   required_in_ci=False)


@pytest.fixture(scope="module")
def service(triton, photos, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    svc = ServiceProcess(triton.grpc_url, str(tmp / "catalog.db"), tmp / "service.log").start()
    svc.import_products(import_requests(photos))
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def query(photos) -> bytes:
    return encode(reshoot(photos["cat"], photos["china"].pixels, seed=5), quality=70)


def test_grpcurl_lists_and_calls_the_api_through_reflection(service, query):
    grpcurl = need("grpcurl")
    listing = subprocess.run([grpcurl, "-plaintext", service.address, "list"], capture_output=True, text=True,
                             timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert {"visualsearch.v1.VisualSearch", "visualsearch.v1.Catalog", "grpc.health.v1.Health"} <= \
        set(listing.stdout.split())
    request = json.dumps({"image": base64.b64encode(query).decode(), "topK": 2})
    reply = subprocess.run([grpcurl, "-plaintext", "-max-msg-sz", str(64 << 20), "-d", "@", service.address,
                            "visualsearch.v1.VisualSearch/SearchByImage"], input=request, capture_output=True,
                           text=True, timeout=120)
    assert reply.returncode == 0, reply.stderr
    groups = json.loads(reply.stdout)["objects"]
    top = {g["label"]: g["matches"][0] for g in groups if g.get("matches")}
    assert "cat" in top, groups
    assert top["cat"].get("product_id", top["cat"].get("productId")) == "cat-001", top["cat"]


def test_ghz_calls_searchbyimage_through_reflection(service, query, tmp_path):
    binary = need("ghz")
    (tmp_path / "req.json").write_text(json.dumps({"image": base64.b64encode(query).decode(), "top_k": 3}))
    result = subprocess.run([binary, "--insecure", "--call", "visualsearch.v1.VisualSearch/SearchByImage",
                             "-D", str(tmp_path / "req.json"), "-n", "4", "-c", "2", "--format", "json",
                             service.address], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 4 and report["statusCodeDistribution"] == {"OK": 4}


def test_make_loadtest_runs_the_real_ghz_and_reads_its_report(service, query, tmp_path, monkeypatch):
    binary = need("ghz")
    monkeypatch.setenv("VS_GHZ", binary)
    assert ghz.find() == Path(binary)
    report = ghz.run(service.address, pb.SearchByImageRequest(image=query, top_k=3), concurrency=2, count=6)
    stats = report.summary()
    assert stats["count"] == 6 and stats["status_codes"] == {"OK": 6}
    assert 0 < stats["latency_ms"]["p50"] < 60_000 and stats["rps"] > 0
    image = tmp_path / "q.jpg"
    image.write_bytes(query)
    assert generator.main(["--address", service.address, "--image", str(image), "-c", "2", "-n", "4",
                           "--warmup", "1", "--engine", "ghz", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["status_codes"] == {"OK": 4}


def test_reflection_in_search_mode_gives_grpcurl_and_ghz_no_catalog_api(triton, query, tmp_path):
    grpcurl, binary = need("grpcurl"), need("ghz")
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "service.log",
                         VS_REFLECTION="search").start()
    try:
        listing = subprocess.run([grpcurl, "-plaintext", svc.address, "list"], capture_output=True, text=True,
                                 timeout=60)
        assert listing.returncode == 0 and "visualsearch.v1.Catalog" not in listing.stdout, listing.stdout
        described = subprocess.run([grpcurl, "-plaintext", svc.address, "describe", "visualsearch.v1.VisualSearch"],
                                   capture_output=True, text=True, timeout=60)
        assert described.returncode == 0 and "SearchByImage" in described.stdout, described.stderr
        for hidden in ("visualsearch.v1.Catalog", "visualsearch.v1.ImportProductsRequest"):
            refused = subprocess.run([grpcurl, "-plaintext", svc.address, "describe", hidden], capture_output=True,
                                     text=True, timeout=60)
            assert refused.returncode != 0, refused.stdout
        (tmp_path / "req.json").write_text(json.dumps({"image": base64.b64encode(query).decode(), "top_k": 2}))
        searched = subprocess.run([binary, "--insecure", "--call", "visualsearch.v1.VisualSearch/SearchByImage",
                                   "-D", str(tmp_path / "req.json"), "-n", "2", "--format", "json", svc.address],
                                  capture_output=True, text=True, timeout=180)
        assert searched.returncode == 0 and json.loads(searched.stdout)["statusCodeDistribution"] == {"OK": 2}
    finally:
        svc.stop()
