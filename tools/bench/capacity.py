"""docs/capacity-plan.md: the Milvus cluster for 30 million catalog images, computed from what
``make bench-scale`` measured (docs/scale/*.json) and the assumptions in ``PLAN``.

    python -m tools.bench.capacity

Every configuration measured (dimension, segment size, index type) gets its growth curve (the
sizes it was measured at), and, from its largest measured size, its memory and CPU at
``PLAN["images"]`` images. CPU per query vector is taken as linear in the rows beyond the
largest measured size: Milvus searches every sealed segment, and once segments are full more
rows are more segments of the same cost; the curve's measured exponent (below 1 on these sizes)
shows how much that overstates. ``PLANNED`` is what deploy/milvus/30m deploys (a test keeps
them equal).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from services.paths import ROOT
from tools.bench.scale_runs import PHOTO_NQ, SUSTAINED_CLIENTS, SUSTAINED_S, load_runs

OUT = ROOT / "docs" / "capacity-plan.md"
EVAL_RESULTS = ROOT / "docs" / "evaluation" / "results.json"

PLAN = {
    "images": 30_000_000,
    "rows_per_image": 3.0,  # objects + whole image; 2.5 measured on the eval catalog (studio shots)
    "scalar_bytes_per_row": 400,  # the service's fields besides the vector (ids, box, title, attributes, key)
    "node_memory_gib": 64, "node_cores": 16, "usable": 0.7,  # a query node, and the share kept for segments
    # SearchByImage/s, and the query vectors of one (the whole photo + at most
    # VS_MAX_SEARCHED_OBJECTS = 4 boxes): 4.63 measured by `make eval` (docs/evaluation.md, shipped)
    "searches_per_s": 100, "vectors_per_search": 4.63,
    "replicas": 2, "shards": 2,
    "p99_target_ms": 100, "recall10_target": 0.95,
    # Storage. MinIO (distributed, 4 servers x 1 drive: erasure parity 2, half the raw bytes
    # usable) holds the binlogs and the index files; compaction rewrites segments beside the
    # old ones until they are collected, hence the headroom. Pulsar keeps every insert for
    # its retention (Milvus' 7 days), written to 2 of 3 bookies: the whole catalog's initial
    # import sits in it at once.
    "minio_servers": 4, "minio_usable": 0.5, "storage_headroom": 1.5,
    "bookies": 3, "write_quorum": 2, "wal_headroom": 1.3, "wal_bytes_per_row_overhead": 200,
}

# What deploy/milvus/30m deploys: the shipped embedder's vectors (1280-d), on the segment size
# and index measured cheapest for them. A cheaper default must lose at most
# QUALITY_BUDGET_PTS of list recall@1 on every `make eval` kind; the projections measured lose
# more (docs/evaluation), so they are an operator's opt-in, priced in the plan.
PLANNED = {"dimension": 1280, "segment_max_mb": 2048, "index_type": "HNSW"}
PLANNED_KEY = (PLANNED["dimension"], PLANNED["segment_max_mb"], PLANNED["index_type"])  # as curves() keys them
NODE_BUDGET = 16  # query nodes in all (both replicas) an operator would accept for this load
QUALITY_BUDGET_PTS = 1.0
# `make eval`'s variant of the shipped default with its vectors 8-bit scalar-quantised (HNSW_SQ)
QUANTISED_VARIANT = "shipped-hnsw-sq"
ROWS = PLAN["images"] * PLAN["rows_per_image"]
# A dimension's list recall@1 cost on `make eval`: points (negative: lost) and the worst kind
# (None for the shipped default itself).
Cost = tuple[float, str | None]


@dataclass(frozen=True)
class Point:
    """One index type at one measured size."""

    vectors: int
    segments: int | None
    # per query vector: the server's own CPU under a sustained load where the run measured it,
    # else a call's p50 with both cores counted busy for the whole call (an upper bound)
    core_ms: float
    p50_ms: float
    p99_ms: float
    nq: int
    recall10: float
    bytes_per_vector: float  # the loaded server's resident memory over idle, per vector
    cpu_measured: bool = False  # core_ms is the server's CPU under a sustained load


def cores_of(run: dict) -> int:
    return int(re.search(r"(\d+) cores", run["machine"]).group(1))


def point(run: dict, index_type: str) -> Point | None:
    entry = run["indexes"].get(index_type, {})
    if "error" in entry or not entry:
        return None
    nq = PHOTO_NQ if f"nq{PHOTO_NQ}" in entry else 8  # runs before the one-list change measured nq=1 and 8
    latency = entry[f"nq{nq}"]
    sustained = entry.get("sustained")
    core_ms = sustained["server_core_ms_per_vector"] if sustained else latency["p50_ms"] * cores_of(run) / nq
    return Point(run["vectors"], entry.get("segments"), core_ms, latency["p50_ms"], latency["p99_ms"], nq,
                 entry["nq1"]["recall10"], entry["rss_over_idle_bytes"] / run["vectors"], bool(sustained))


def curves() -> dict[tuple[int, int, str], list[Point]]:
    """Every measured configuration, its points by size."""
    out: dict[tuple[int, int, str], list[Point]] = {}
    for run in load_runs():
        for index_type in run["indexes"]:
            p = point(run, index_type)
            if p:
                out.setdefault((run["dimension"], run["segment_max_mb"], index_type), []).append(p)
    return {key: sorted(points, key=lambda p: p.vectors) for key, points in out.items()}


def exponent(points: list[Point]) -> float | None:
    """The measured growth of CPU per query vector with rows: core_ms ~ rows^exponent (least
    squares in log-log over every point)."""
    if len(points) < 2:
        return None
    x = np.log([p.vectors for p in points])
    y = np.log([p.core_ms for p in points])
    return float(np.polyfit(x, y, 1)[0])


def plan(points: list[Point], dimension: int) -> dict:
    """PLAN's figures for one configuration, from its largest measured point."""
    p, top, rows = PLAN, points[-1], ROWS
    scale = rows / top.vectors
    node_bytes = p["node_memory_gib"] * 2**30 * p["usable"]
    memory = rows * (top.bytes_per_vector + p["scalar_bytes_per_row"])
    core_ms = top.core_ms * scale
    cores = p["searches_per_s"] * p["vectors_per_search"] * core_ms / 1000
    memory_nodes = int(np.ceil(memory / node_bytes))
    cpu_nodes = int(np.ceil(cores / (p["node_cores"] * p["usable"])))
    per_replica = max(memory_nodes, cpu_nodes)
    # One search's work spread over the replica's cores, against the same at the measured point
    # on this machine's cores; never below what was measured there (fixed costs do not shrink).
    call_ms = p["vectors_per_search"] * core_ms / (per_replica * p["node_cores"] * p["usable"])
    p99 = max(top.p99_ms, top.p99_ms * call_ms / top.p50_ms)  # the call measured took p50 on its cores
    segments = int(np.ceil(top.segments * scale)) if top.segments else None
    return {"rows": rows, "memory_bytes": memory, "memory_nodes": memory_nodes, "core_ms": core_ms,
            "cores": cores, "cpu_nodes": cpu_nodes, "per_replica": per_replica,
            "query_nodes": per_replica * p["replicas"], "p99_ms": p99, "segments": segments,
            "recall10": top.recall10, "dimension": dimension}


def storage(dimension: int, points: list[Point]) -> dict:
    """PLAN's object store and message queue volumes: GiB per MinIO drive and per bookie ledger
    volume, from the row bytes and the measured index bytes."""
    p, rows = PLAN, ROWS
    row_bytes = dimension * 4 + p["scalar_bytes_per_row"]
    stored = rows * (row_bytes + points[-1].bytes_per_vector) * p["storage_headroom"]
    wal = rows * (row_bytes + p["wal_bytes_per_row_overhead"]) * p["write_quorum"] / p["bookies"] * p["wal_headroom"]
    return {"stored_bytes": stored,
            "minio_drive_gib": int(np.ceil(stored / p["minio_usable"] / p["minio_servers"] / 2**30 / 100) * 100),
            "bookie_ledgers_gib": int(np.ceil(wal / 2**30 / 100) * 100)}


def planned_points(all_curves: dict[tuple[int, int, str], list[Point]]) -> list[Point]:
    """``PLANNED``'s measured points, or an error that says which runs to make."""
    if PLANNED_KEY not in all_curves:
        raise SystemExit(f"no run of {_name(PLANNED_KEY)} in docs/scale/: make bench-scale SCALE_ARGS='--dimension "
                         f"{PLANNED['dimension']} --segment-max-mb {PLANNED['segment_max_mb']} --index-types "
                         f"{PLANNED['index_type']} --vectors N' at three sizes or more")
    return all_curves[PLANNED_KEY]


def planned() -> tuple[dict, dict]:
    """The plan and the storage of ``PLANNED`` (what deploy/milvus/30m holds)."""
    points = planned_points(curves())
    return plan(points, PLANNED["dimension"]), storage(PLANNED["dimension"], points)


NOTES = """
## Levers not measured here

* Milvus 2.5 (what deploy/ runs) adds HNSW with quantised vectors (`HNSW_SQ`, `HNSW_PQ`) and a
  1024 MB default segment size; the `milvus` wheel's 2.3 server builds neither (2.3.9 is the
  newest on the package registry), so HNSW_SQ is only estimated above. The 30m component sets
  the segment size it was measured with.
* Float16 vectors (`FLOAT16_VECTOR`, Milvus 2.4 and later) would halve the 1280-d vectors'
  memory; not in the 2.3 server either.
* A query node's CPU is priced from the standalone server's, which also runs the proxy and
  the coordinators: an upper bound on what a query node alone spends.
* DISKANN was accepted but never built by the standalone server (its disk index needs query and
  index nodes configured for it); IVF_PQ (`m=64`) reached recall@10 0.28 at 20,000 rows.
* GPU Triton throughput is not measured (no GPU machine was lent to this work): the import rate
  uses ~1,000 images/s per GPU pod.
"""


def cost_text(quality: dict[int, Cost], dimension: int) -> str:
    if dimension not in quality:
        return "not measured"
    points, worst = quality[dimension]
    return "today's default" if worst is None else f"{points:+.1f} pts ({worst}, its worst kind)"


def choice(all_curves: dict[tuple[int, int, str], list[Point]], plans: dict[tuple[int, int, str], dict],
           quality: dict[int, Cost]) -> list[str]:
    """What the plan deploys, what the cheapest configuration that meets the targets would cost
    in nodes and in list recall, and whether that cost keeps the deployed one the default."""
    key, f = PLANNED_KEY, plans[PLANNED_KEY]
    meeting = [(plans[k], k) for k, points in all_curves.items() if meets(plans[k], points)]
    lines = ["## The choice", "",
             f"* **Deployed** (deploy/milvus/30m): the shipped embedder's {key[0]}-d vectors, {_name(key)}: "
             f"**{f['per_replica']} x {PLAN['replicas']} = {f['query_nodes']} query nodes** "
             f"({'memory' if f['memory_nodes'] >= f['cpu_nodes'] else 'CPU'} sets the count; "
             f"{'within' if f['query_nodes'] <= NODE_BUDGET else 'over'} a budget of {NODE_BUDGET}), from "
             f"{len(all_curves[key])} measured sizes up to {all_curves[key][-1].vectors / 1e6:g} M rows."]
    if meeting:
        best, best_key = min(meeting, key=lambda m: m[0]["query_nodes"])
        lines.append(f"* **Cheapest that meets the targets**: {_name(best_key)}: {best['per_replica']} x "
                     f"{PLAN['replicas']} = {best['query_nodes']} query nodes, at a list recall@1 cost of "
                     f"{cost_text(quality, best_key[0])} on `make eval`.")
        cost = quality.get(best_key[0])
        if best_key[0] != key[0] and cost is not None and cost[0] >= -QUALITY_BUDGET_PTS:
            lines.append(f"* **A candidate for the default**: it loses at most {QUALITY_BUDGET_PTS:g} point of "
                         "list recall@1 on every `make eval` kind; `PLANNED` (tools/bench/capacity.py) and the "
                         "shipped dimension should move to it.")
        elif best_key[0] != key[0]:
            lines.append(
                f"* **Why the default stays at {key[0]} dimensions**: a cheaper default is adopted only if it "
                f"loses at most {QUALITY_BUDGET_PTS:g} point of list recall@1 on every `make eval` kind, and this "
                f"one loses {'an unmeasured amount' if cost is None else f'{-cost[0]:.1f}'} "
                "(docs/history/evaluation-runs.md, variants `shipped-<d>-learned`). An operator who accepts the "
                f"cost builds the models with `VS_EMBEDDING_DIMENSION={best_key[0]} make models` (the models image "
                f"from that repository), sets the query-node count to {best['per_replica']} per replica and "
                "imports the catalog anew (vectors of two dimensions never share a collection).")
    projected = sorted((d for d, (_, worst) in quality.items() if worst is not None), reverse=True)
    if projected:
        lines.append("* **Every projection measured** (list recall@1 against the default, its worst `make eval` "
                     "kind): " + "; ".join(f"{d}-d {cost_text(quality, d)}" for d in projected) + ".")
    return lines + [""]


def quantised_lines(all_curves: dict[tuple[int, int, str], list[Point]], sq_cost: Cost | None) -> list[str]:
    """What the deployed configuration would need with its vectors 8-bit quantised (HNSW_SQ,
    Milvus 2.5): estimated from its measured HNSW curve, never a target met."""
    dimension = PLANNED["dimension"]
    f = plan(quantised(all_curves[PLANNED_KEY], dimension), dimension)
    cost = ("not measured" if sq_cost is None else "none lost on any kind" if sq_cost[0] >= 0
            else f"{sq_cost[0]:+.1f} pts ({sq_cost[1]}, its worst kind)")
    return ["## Quantised vectors: estimated, not measured on a server", "",
            f"HNSW_SQ (8-bit scalar quantisation, Milvus 2.5; what deploy/ runs) keeps the shipped {dimension}-d "
            "vectors at one byte a dimension. The `milvus` wheel's 2.3 server cannot build it, so its memory here is "
            f"the measured HNSW figure less 3 bytes a dimension and its CPU is HNSW's measured one: "
            f"{f['memory_bytes'] / 1e9:.0f} GB per replica, {f['memory_nodes']} nodes for memory, {f['cpu_nodes']} for "
            f"CPU: **{f['per_replica']} x {PLAN['replicas']} = {f['query_nodes']} query nodes** (an estimate). Its "
            f"list recall@1 cost on `make eval` (`{QUANTISED_VARIANT}`, through Milvus Lite's FAISS HNSW_SQ, "
            f"similarities from the quantised vectors): {cost}. Deploying it waits for a Milvus 2.5 server a test "
            "here can run; this component does not.", ""]


def meets(f: dict, points: list[Point]) -> bool:
    """Growth measured at 3 sizes or more, and the p99, recall and node-count targets."""
    return (len(points) >= 3 and f["p99_ms"] <= PLAN["p99_target_ms"] and f["recall10"] >= PLAN["recall10_target"]
            and f["query_nodes"] <= NODE_BUDGET)


def _cpu_kind(points: list[Point]) -> str:
    kinds = {p.cpu_measured for p in points}
    return "server" if kinds == {True} else "bound" if kinds == {False} else "server at " + " / ".join(
        f"{p.vectors / 1e6:g} M" for p in points if p.cpu_measured)


def _name(key: tuple[int, int, str]) -> str:
    return f"{key[2]}, {key[0]}-d, segments up to {key[1]} MB"


def report(quality: dict[int, Cost], sq_cost: Cost | None = None) -> str:
    """The plan's markdown; ``quality`` holds each dimension's list-recall cost and ``sq_cost``
    that of 8-bit quantised vectors (docs/evaluation)."""
    all_curves = curves()
    planned_points(all_curves)
    plans = {key: plan(points, key[0]) for key, points in all_curves.items()}
    rows = int(ROWS)
    lines = [
        "# Capacity plan: 30 million catalog images", "",
        "Generated by `python -m tools.bench.capacity` from what `make bench-scale` measured "
        "(docs/scale/*.json, one file per run of `python -m tools.bench.scale`; every figure of every run: "
        "docs/benchmarks-scale.md) and the assumptions below (`PLAN` in tools/bench/capacity.py). "
        "**Measured**: the growth curves, on one machine (named per run in docs/benchmarks-scale.md), on the "
        "real Milvus 2.3.5 standalone server of the `milvus` wheel. **Extrapolated**: everything at "
        f"{rows / 1e6:.0f} million rows.", "",
        "## What is assumed", "",
        "| quantity | value | why |", "|---|---|---|",
        f"| catalog images | {PLAN['images']:,} | VOVA's catalog |",
        f"| rows per image | {PLAN['rows_per_image']:g} | objects + the whole image; 2.5 measured on the evaluation "
        "catalog (studio shots, docs/evaluation/results.json); lifestyle photos hold more objects |",
        f"| scalar bytes per row | {PLAN['scalar_bytes_per_row']} | estimated: ids, box, category, price, title, "
        "attributes, content key, flags; the bench rows carry only an id and a category |",
        f"| query node | {PLAN['node_memory_gib']} GiB, {PLAN['node_cores']} cores, {PLAN['usable']:.0%} of each for "
        "segments and search | a common node size; the rest for Milvus itself, growing segments, compaction, "
        "and headroom against queueing |",
        f"| load | {PLAN['searches_per_s']} SearchByImage/s, {PLAN['vectors_per_search']} query vectors each | "
        "the whole photo and its best 4 boxes (`VS_MAX_SEARCHED_OBJECTS`), one Milvus call: per photo as "
        "measured by `make eval` (docs/evaluation.md); the table scales linearly with both |",
        f"| replicas | {PLAN['replicas']} | a query node can fail or drain without losing a part of the catalog |",
        f"| targets | Milvus p99 <= {PLAN['p99_target_ms']} ms, recall@10 >= {PLAN['recall10_target']}, at most "
        f"{NODE_BUDGET} query nodes in all | a bill an operator accepts for this load; recall@10 against exact "
        "search at the largest measured size |", "",
        f"Rows: {PLAN['images'] / 1e6:.0f} M x {PLAN['rows_per_image']:g} = **{rows / 1e6:.0f} million vectors**.",
        "", *choice(all_curves, plans, quality), *quantised_lines(all_curves, sq_cost),
        "## How it is computed", "",
        f"* **CPU per query vector**: the server's own CPU seconds (user + system) per query vector while "
        f"{SUSTAINED_CLIENTS} callers searched photo-sized calls (nq={PHOTO_NQ}) back to back for {SUSTAINED_S} s "
        "(marked *server*). Runs made before that was measured (before 2026-12-07) give an upper bound instead: a "
        f"photo's call (nq={PHOTO_NQ}; nq=8 for the 1280-d runs made before the one-list change) p50 x the bench "
        "machine's cores / nq (marked *bound*). Milvus searches every sealed segment, so from the largest "
        "measured size on it is scaled **linearly with the rows** (more rows, more full segments of the same "
        "cost). The measured exponent "
        "(core-ms ~ rows^a over the measured sizes) is below 1 where segments were still filling, so linear is "
        "the safe side.",
        "* **Memory per replica**: the loaded server's resident memory over idle, per vector, at the largest "
        "measured size (an upper bound: memory taken while inserting or building is not always returned), plus "
        "the scalar bytes, times the rows.",
        f"* **Query nodes per replica**: the larger of memory / ({PLAN['usable']:.0%} of "
        f"{PLAN['node_memory_gib']} GiB) and cores for the load / ({PLAN['usable']:.0%} of {PLAN['node_cores']}); "
        f"x {PLAN['replicas']} replicas.",
        "* **p99 in Milvus**: the measured p99 at the largest size, scaled by one call's work spread over a "
        "replica's usable cores against the same call's work on the bench machine's cores; never below the "
        "measured p99 (fixed costs do not shrink). An estimate: it assumes Milvus spreads a collection's "
        "segments evenly over a replica's query nodes and searches them in parallel.",
        "* **Segments**: the sealed segments counted at the largest size, scaled with the rows.", "",
        "## Growth measured (per configuration)", "",
        "| configuration | rows measured | segments | core-ms per query vector | p50 / p99 ms (nq) | recall@10 "
        "| bytes per vector | growth exponent a |", "|---|---|---|---|---|---|---|---|"]
    for key, points in all_curves.items():
        a = exponent(points)
        lines.append(
            f"| {_name(key)} | {' / '.join(f'{p.vectors / 1e6:g} M' for p in points)} | "
            f"{' / '.join(str(p.segments) if p.segments else '-' for p in points)} | "
            f"{' / '.join(f'{p.core_ms:.2f}' for p in points)} ({_cpu_kind(points)}) | "
            f"{' / '.join(f'{p.p50_ms:.1f} / {p.p99_ms:.1f} ({p.nq})' for p in points)} | "
            f"{' / '.join(f'{p.recall10:.3f}' for p in points)} | "
            f"{' / '.join(f'{p.bytes_per_vector:.0f}' for p in points)} | "
            f"{'-' if a is None else f'{a:.2f}'} |")
    lines += ["", f"## At {rows / 1e6:.0f} million rows, {PLAN['searches_per_s']} searches/s (extrapolated)", "",
              "| configuration | points | list R@1 cost (make eval) | recall@10 | GB per replica | nodes for memory "
              "| core-ms per query vector | cores | nodes for CPU | segments | p99 ms (estimate) "
              "| query nodes (x replicas) | meets the targets |", "|---" * 13 + "|"]
    for key, points in sorted(all_curves.items(), key=lambda kv: plans[kv[0]]["query_nodes"]):
        f = plans[key]
        bold = "**" if key == PLANNED_KEY else ""
        lines.append(
            f"| {bold}{_name(key)}{bold} | {len(points)} | {cost_text(quality, key[0])} | "
            f"{f['recall10']:.3f} | {f['memory_bytes'] / 1e9:.0f} | {f['memory_nodes']} | {f['core_ms']:.1f} | "
            f"{f['cores']:.0f} | {f['cpu_nodes']} | {f['segments'] or '-'} | {f['p99_ms']:.0f} | "
            f"{bold}{f['per_replica']} x {PLAN['replicas']} = {f['query_nodes']}{bold} | "
            f"{'yes' if meets(f, points) else 'no' if len(points) >= 3 else 'fewer than 3 sizes'} |")
    f, volumes = plans[PLANNED_KEY], storage(PLANNED["dimension"], all_curves[PLANNED_KEY])
    lines += ["", "## Storage of the planned configuration (extrapolated)", "",
              f"* MinIO: {f['rows'] / 1e6:.0f} M rows x ({PLANNED['dimension']} x 4 vector bytes + "
              f"{PLAN['scalar_bytes_per_row']} scalar bytes + the index) x {PLAN['storage_headroom']} compaction "
              f"headroom = {volumes['stored_bytes'] / 1e12:.2f} TB, on {PLAN['minio_servers']} servers whose erasure "
              f"coding keeps {PLAN['minio_usable']:.0%} of the raw bytes: **{volumes['minio_drive_gib']} GiB per "
              "drive**.",
              f"* Pulsar (the WAL): the whole initial import sits in it for the 7-day retention, on "
              f"{PLAN['write_quorum']} of {PLAN['bookies']} bookies, with {PLAN['wal_headroom']}x headroom: "
              f"**{volumes['bookie_ledgers_gib']} GiB of ledgers per bookie**.",
              f"* Shards: {PLAN['shards']} (`VS_MILVUS_SHARDS`): one shard took ~9,100 rows/s from one client on 2 "
              "cores (docs/benchmarks-scale.md); a full import at ~1,000 images/s per GPU Triton pod writes ~3,000 "
              "rows/s per pod, so one shard holds one or two GPU pods and two hold the import of a few.", ""]
    return "\n".join(lines + [NOTES])


def quality_costs(results: Path = EVAL_RESULTS) -> dict[int, Cost]:
    """Each dimension's list recall@1 against the shipped default's, on the worst `make eval` kind
    (the variants `shipped` and `shipped-<d>-learned`: the same models and settings, the embedder
    projected to d dimensions)."""
    by_name = _by_variant(results)
    shipped = by_name.get("shipped")
    if not shipped:
        return {}
    costs: dict[int, Cost] = {shipped["dimension"]: (0.0, None)}
    for name, result in by_name.items():
        match = re.fullmatch(r"shipped-(\d+)-learned", name)
        if not match or int(match.group(1)) == shipped["dimension"]:  # shipped-1280-learned: an older whitening
            continue
        costs[int(match.group(1))] = _worst(result, shipped)
    return costs


def quantised_cost(results: Path = EVAL_RESULTS) -> Cost | None:
    """The list recall@1 that 8-bit scalar-quantised vectors cost against the shipped default, on
    the worst `make eval` kind (variant ``QUANTISED_VARIANT``), or None where not measured."""
    by_name = _by_variant(results)
    if "shipped" not in by_name or QUANTISED_VARIANT not in by_name:
        return None
    return _worst(by_name[QUANTISED_VARIANT], by_name["shipped"])


def _by_variant(results: Path) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads(results.read_text())["results"]}


def _worst(result: dict, shipped: dict) -> Cost:
    deltas = {kind: result["kinds"][kind]["list"]["recall1"] - figures["list"]["recall1"]
              for kind, figures in shipped["kinds"].items() if kind in result["kinds"]}
    worst = min(deltas, key=deltas.get)
    return deltas[worst] * 100, worst


def quantised(points: list[Point], dimension: int) -> list[Point]:
    """``points`` with each vector held in one byte a dimension instead of four (HNSW_SQ's
    8-bit scalar quantiser): the graph and the rest as measured, the CPU per query vector taken
    as measured (an 8-bit distance costs no more than a float one). An estimate, not a run."""
    return [replace(p, bytes_per_vector=p.bytes_per_vector - 3 * dimension) for p in points]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = report(quality_costs(), quantised_cost())
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
