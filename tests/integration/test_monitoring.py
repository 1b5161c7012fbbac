"""The shipped monitoring, proven: promtool unit tests of every rule, and a real Prometheus
scraping the real tritonserver and search service under load from the real ghz, evaluating
the shipped recording rules, the prometheus-adapter queries the HPAs use and the dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from services.api import pb
from services.channels import PLAINTEXT
from tests.integration.manifests import DEPLOY, by_kind, named, render
from tests.integration.prometheus_process import Prometheus, binary, rule_groups
from tests.integration.service_process import ServiceProcess
from tools.loadtest import ghz
from tools.loadtest import run as loadtest
from tools.sample_photos import encode, reshoot

DASHBOARD = DEPLOY / "base" / "monitoring" / "visualsearch-dashboard.json"
NAMESPACE = "visualsearch"


@pytest.fixture(scope="module")
def manifests():
    return render("cpu")


def test_every_rule_passes_its_promtool_unit_tests(manifests, tmp_path):
    rules = named(manifests, "PrometheusRule", "visualsearch")
    (tmp_path / "visualsearch.rules.yaml").write_text(yaml.safe_dump(rule_groups(rules)))
    shutil.copy(DEPLOY / "monitoring" / "tests" / "rules_test.yaml", tmp_path)
    check = subprocess.run([binary("promtool"), "check", "rules", "visualsearch.rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run([binary("promtool"), "test", "rules", "rules_test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # every alert the issue asks for exists and is tested
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (tmp_path / "rules_test.yaml").read_text()))
    assert alerts == tested == {"VisualSearchDependencyDown", "VisualSearchErrorRate", "VisualSearchLatencySLOBurn",
                                "VisualSearchHPAAtMax", "TritonInferenceFailures"}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"].replace("$namespace", NAMESPACE))
            for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_is_valid_promql_and_covers_what_operators_need(tmp_path):
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": expr}
                                                        for i, (_, expr) in enumerate(queries)]}]}
    (tmp_path / "dashboard.rules.yaml").write_text(yaml.safe_dump(rules))
    check = subprocess.run([binary("promtool"), "check", "rules", "dashboard.rules.yaml"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    exprs = " ".join(expr for _, expr in queries)
    for needed in ("vs_requests_total", "vs_request_duration_seconds_bucket", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us", "triton:batch_size:rate5m", "vs_objects_per_image"):
        assert needed in exprs, needed


def adapter_query(rule: dict, pod: str) -> str:
    series = rule["seriesQuery"].split("{")[0].strip("'")
    return (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod="{pod}"').replace("<<.GroupBy>>", "pod"))


def hpa_targets(manifests: list[dict]) -> dict[str, float]:
    return {m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"])
            for hpa in by_kind(manifests, "HorizontalPodAutoscaler") for m in hpa["spec"]["metrics"]
            if m["type"] == "Pods"}


@pytest.fixture
def observed(triton, manifests, tmp_path):
    """The search service and Triton scraped by a real Prometheus with the shipped rules."""
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "service.log",
                         VS_MAX_IN_FLIGHT="64", VS_MAX_IN_FLIGHT_PER_CALLER="64").start()
    prometheus = Prometheus(tmp_path / "prometheus", {
        "triton": (f"127.0.0.1:{triton.metrics_port}", {"namespace": NAMESPACE, "pod": "triton-0"}),
        "search": (f"127.0.0.1:{svc.metrics_port}", {"namespace": NAMESPACE, "pod": "search-0"}),
    }, rule_groups(named(manifests, "PrometheusRule", "visualsearch")))
    try:
        yield svc, prometheus.start()
    finally:
        prometheus.stop()
        svc.stop()


def drive(service, concurrency: int, stop: threading.Event, payload: Path, work: Path) -> None:
    """Load until ``stop``: the real ghz when it is here, the in-repo generator otherwise."""
    binary = ghz.find()
    if binary is not None:
        args = ghz.command(binary, service.address, payload, concurrency, None, 240, None, 60, PLAINTEXT)
        process = subprocess.Popen(args, stdout=open(work / "ghz.out", "wb"), stderr=subprocess.STDOUT)
        stop.wait(240)
        process.terminate()
        process.wait(30)
        return
    import asyncio

    request = pb.SearchByImageRequest.FromString(payload.read_bytes())
    call = loadtest.search_call(service.address, request, 60)
    while not stop.is_set():  # rounds of a few seconds, each keeping ``concurrency`` calls in flight
        asyncio.run(loadtest.run(call, concurrency, None, 5.0, None, 0))


def wait_for(prometheus: Prometheus, queries: dict[str, str], check, timeout_s: float) -> dict[str, float | None]:
    deadline = time.monotonic() + timeout_s
    while True:
        values = {name: prometheus.value(expr) for name, expr in queries.items()}
        if all(check(name, v) for name, v in values.items()) or time.monotonic() > deadline:
            return values
        time.sleep(2)


def test_each_hpa_signal_rises_above_its_target_under_load_and_falls_below_at_rest(
        observed, manifests, photos, tmp_path):
    service, prometheus = observed
    targets = hpa_targets(manifests)
    adapter = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    pods = {"triton_queue_duration_us_per_request": "triton-0", "vs_in_flight_requests": "search-0"}
    queries = {rule["name"]["as"]: adapter_query(rule, pods[rule["name"]["as"]]) for rule in adapter["rules"]["custom"]}
    assert set(queries) == set(targets) == set(pods)

    def below(name, value):
        return value is not None and value < targets[name]

    def above(name, value):
        return value is not None and value > targets[name]

    at_rest = wait_for(prometheus, queries, below, 60)
    assert all(below(n, v) for n, v in at_rest.items()), at_rest

    payload = tmp_path / "request.bin"
    shot = reshoot(photos["coffee"], photos["flower"].pixels, seed=3)
    payload.write_bytes(pb.SearchByImageRequest(image=encode(shot, quality=70), top_k=5).SerializeToString())
    stop = threading.Event()
    # twice the in-flight target keeps that many calls in flight (Triton queues them)
    load = threading.Thread(target=drive, args=(service, int(2 * targets["vs_in_flight_requests"]), stop, payload,
                                                tmp_path))
    load.start()
    try:
        loaded = wait_for(prometheus, queries, above, 150)
        # the dashboard's queries all answer from the real metrics; the rates need two scrapes
        # after the first calls finished, which on a slow machine comes after the gauges rose
        deadline = time.monotonic() + 90
        while (empty := [title for title, expr in dashboard_queries() if not prometheus.query(expr)]) \
                and time.monotonic() < deadline:
            time.sleep(2)
    finally:
        stop.set()
        load.join(60)
    assert all(above(n, v) for n, v in loaded.items()), (loaded, targets)
    assert not empty, empty

    rest_again = wait_for(prometheus, queries, below, 150)
    assert all(below(n, v) for n, v in rest_again.items()), rest_again
