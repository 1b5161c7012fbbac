"""The capacity plan's arithmetic (tools/bench/capacity.py) on hand-made points."""

from __future__ import annotations

import json

import pytest

from tools.bench import capacity
from tools.bench.capacity import PLAN, Point


def points(*core_ms: float, vectors: tuple[int, ...] = (200_000, 1_000_000, 3_000_000),
           bytes_per_vector: float = 1500.0) -> list[Point]:
    return [Point(n, max(1, n // 500_000), ms, ms * 5 / 2, ms * 5, 5, 0.99, bytes_per_vector)
            for n, ms in zip(vectors, core_ms, strict=True)]


def test_cpu_scales_linearly_from_the_largest_measured_point():
    curve = points(0.5, 1.0, 2.0)
    f = capacity.plan(curve, 256)
    rows = PLAN["images"] * PLAN["rows_per_image"]
    assert f["core_ms"] == pytest.approx(2.0 * rows / 3_000_000)
    assert f["cores"] == pytest.approx(PLAN["searches_per_s"] * PLAN["vectors_per_search"] * f["core_ms"] / 1000)
    assert f["cpu_nodes"] * PLAN["node_cores"] * PLAN["usable"] >= f["cores"]
    assert (f["cpu_nodes"] - 1) * PLAN["node_cores"] * PLAN["usable"] < f["cores"]
    assert f["query_nodes"] == max(f["cpu_nodes"], f["memory_nodes"]) * PLAN["replicas"]
    assert f["segments"] == 6 * rows / 3_000_000


def test_memory_counts_the_measured_bytes_and_the_scalars():
    f = capacity.plan(points(0.5, 1.0, 2.0), 256)
    rows = PLAN["images"] * PLAN["rows_per_image"]
    assert f["memory_bytes"] == pytest.approx(rows * (1500 + PLAN["scalar_bytes_per_row"]))
    assert f["memory_nodes"] == -(-f["memory_bytes"] // (PLAN["node_memory_gib"] * 2**30 * PLAN["usable"]))


def test_the_growth_exponent_is_fitted_over_every_point():
    assert capacity.exponent(points(1.0, 5.0, 15.0)) == pytest.approx(1.0, abs=0.01)
    assert capacity.exponent(points(1.0, 1.0, 1.0)) == pytest.approx(0.0, abs=0.01)
    assert capacity.exponent(points(1.0, vectors=(1_000_000,))) is None


def test_p99_never_drops_below_what_was_measured():
    # memory needs many nodes: one call's work spread over their cores takes less than measured
    f = capacity.plan(points(0.01, 0.01, 0.01, bytes_per_vector=20_000), 256)
    assert f["memory_nodes"] > f["cpu_nodes"] and f["p99_ms"] == pytest.approx(0.05)
    # CPU sizes the nodes: the call's work at 90 M rows over a replica's cores, scaled from the measured p99
    g = capacity.plan(points(0.5, 1.0, 2.0), 256)
    call_ms = PLAN["vectors_per_search"] * g["core_ms"] / (g["per_replica"] * PLAN["node_cores"] * PLAN["usable"])
    assert g["p99_ms"] == pytest.approx(max(10.0, 10.0 * call_ms / 5.0))


def test_a_target_needs_three_sizes():
    three, two = points(0.01, 0.01, 0.01), points(0.01, 0.01, vectors=(1_000_000, 3_000_000))
    assert capacity.meets(capacity.plan(three, 256), three)
    assert not capacity.meets(capacity.plan(two, 256), two)


def test_quality_costs_name_the_worst_kind(tmp_path):
    def result(name: str, dimension: int, scene: float, reshot: float) -> dict:
        return {"variant": name, "dimension": dimension,
                "kinds": {"scene": {"list": {"recall1": scene}}, "reshot": {"list": {"recall1": reshot}}}}

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": [result("shipped", 1280, 0.60, 1.0),
                                            result("shipped-256-learned", 256, 0.58, 0.995),
                                            result("shipped-float", 1280, 0.7, 1.0),
                                            result("shipped-1280-learned", 1280, 0.5, 1.0)]}))
    costs = capacity.quality_costs(path)
    assert capacity.cost_text(costs, 1280) == "today's default"
    assert capacity.cost_text(costs, 256) == "-2.0 pts (scene, its worst kind)"
    assert capacity.cost_text(costs, 512) == "not measured"


def test_the_choice_prices_the_cheaper_configuration_and_keeps_the_default_when_it_costs_recall():
    deployed, cheap = capacity.PLANNED_KEY, (256, 2048, "HNSW")
    curves = {deployed: points(2.0, 4.0, 8.0, bytes_per_vector=5500.0), cheap: points(0.5, 1.0, 2.0)}
    plans = {key: capacity.plan(curve, key[0]) for key, curve in curves.items()}

    def text(curves: dict, quality: dict) -> str:
        return "\n".join(capacity.choice(curves, {k: capacity.plan(c, k[0]) for k, c in curves.items()}, quality))

    costly = text(curves, {256: (-4.9, "scene")})
    big, small = plans[deployed], plans[cheap]
    assert small["query_nodes"] < big["query_nodes"]
    assert f"= {big['query_nodes']} query nodes" in costly and f"= {small['query_nodes']} query nodes" in costly
    assert "-4.9 pts" in costly and "VS_EMBEDDING_DIMENSION=256 make models" in costly
    assert "loses 4.9" in costly and "A candidate for the default" not in costly
    assert "Every projection measured" in costly and "256-d -4.9 pts (scene, its worst kind)" in costly
    # within the quality budget the cheaper dimension is named a candidate for the default instead
    cheap_enough = text(curves, {256: (-0.5, "scene")})
    assert "A candidate for the default" in cheap_enough and "Why the default stays" not in cheap_enough
    # a cheaper configuration of the same dimension costs no recall: nothing to explain
    same = {deployed: curves[deployed], (deployed[0], 512, "HNSW"): points(0.5, 1.0, 2.0)}
    assert "Why the default stays" not in text(same, {})


def test_a_plan_without_runs_of_the_planned_configuration_says_which_to_make():
    with pytest.raises(SystemExit, match=r"make bench-scale .*--segment-max-mb"):
        capacity.planned_points({(256, 2048, "HNSW"): points(0.5, 1.0, 2.0)})


def test_a_run_with_a_sustained_load_is_priced_by_the_servers_cpu_not_the_latency_bound():
    entry = {"nq5": {"p50_ms": 10.0, "p99_ms": 20.0}, "nq1": {"recall10": 0.99}, "rss_over_idle_bytes": 2e9,
             "segments": 4}
    run = {"vectors": 1_000_000, "machine": "AMD EPYC, 2 cores, 24 GiB RAM", "indexes": {"HNSW": entry}}
    bound = capacity.point(run, "HNSW")
    assert bound.core_ms == pytest.approx(10.0 * 2 / 5) and not bound.cpu_measured
    entry["sustained"] = {"server_core_ms_per_vector": 1.25}
    measured = capacity.point(run, "HNSW")
    assert measured.core_ms == 1.25 and measured.cpu_measured
    assert capacity._cpu_kind([bound, measured]) == "server at 1 M"
    assert capacity._cpu_kind([measured]) == "server" and capacity._cpu_kind([bound]) == "bound"


def test_quantised_vectors_keep_one_byte_a_dimension_and_the_measured_graph_and_cpu(tmp_path):
    curve = points(0.5, 1.0, 2.0, bytes_per_vector=5500.0)
    sq = capacity.quantised(curve, 1280)
    assert [p.bytes_per_vector for p in sq] == [5500.0 - 3 * 1280] * 3
    assert [p.core_ms for p in sq] == [p.core_ms for p in curve]
    assert capacity.plan(sq, 1280)["memory_nodes"] < capacity.plan(curve, 1280)["memory_nodes"]
    path = tmp_path / "results.json"

    def kinds(scene: float) -> dict:
        return {"scene": {"list": {"recall1": scene}}}

    path.write_text(json.dumps({"results": [{"variant": "shipped", "dimension": 1280, "kinds": kinds(0.60)}]}))
    assert capacity.quantised_cost(path) is None
    path.write_text(json.dumps({"results": [{"variant": "shipped", "dimension": 1280, "kinds": kinds(0.60)},
                                            {"variant": capacity.QUANTISED_VARIANT, "dimension": 1280,
                                             "kinds": kinds(0.595)}]}))
    assert capacity.quantised_cost(path) == pytest.approx((-0.5, "scene"))
