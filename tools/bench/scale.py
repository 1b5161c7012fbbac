"""``make bench-scale``: index types at catalog scale on the real Milvus 2.3.5 server.

One collection of ``--vectors`` unit vectors of ``--dimension`` (default: the served one;
scattered around real embeddings of photo crops through the embedder projected to that
dimension, as ``make bench`` builds them: random vectors flatter no index), each row with one
of ``--categories`` categories, on a server whose segments grow to ``--segment-max-mb``
(Milvus' ``dataCoord.segment.maxSize``, 512 by default). For every index type in turn (the
index is dropped and built again on the same rows): build time, the server's resident memory
once loaded, the sealed segments it searches, recall@10 against exact inner-product search,
p50/p99 for nq=1, nq=5 (a photo at the service's defaults) and nq=8, and nq=1/8 with a category
filter, and the server's own CPU per query vector under a sustained load of photo-sized calls.
Then, optionally, the same rows in a collection whose category is the partition key.

    python -m tools.bench.scale [--vectors 1000000] [--dimension 256] [--segment-max-mb 2048]
                                [--index-types HNSW,IVF_FLAT,IVF_SQ8,IVF_PQ,DISKANN]

Results go to docs/scale/<vectors>.json (served dimension, default segments) or
docs/scale/<vectors>-<dimension>d-<segment MB>mb.json; ``--report`` writes
docs/benchmarks-scale.md from every results file there; ``python -m tools.bench.capacity``
turns them into docs/capacity-plan.md.
On 2 cores, 1,000,000 1280-d vectors took 3-6 minutes per index with 512 MB segments (HNSW,
IVF_FLAT, IVF_SQ8; about 25 minutes in all) and 20 minutes for HNSW with 2048 MB segments;
3,000,000 256-d vectors about 25 minutes for HNSW and IVF_SQ8. IVF_PQ builds slowly and
DISKANN never finished on the standalone server (``--build-timeout-s`` reports an index not built in time and moves on).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from services.paths import BUILD, ROOT
from tools.bench.common import clustered_vectors, cpu_meter, machine, pct, real_centers
from tools.bench.scale_runs import (
    DEFAULT_SEGMENT_MB,
    PHOTO_NQ,
    RESULTS,
    SUSTAINED_CLIENTS,
    SUSTAINED_S,
    load_runs,
    result_path,
)
from tools.cache import default_cache
from tools.models import build
from tools.models.local_pipeline import LocalPipeline
from tools.stack.milvus_processes import MilvusServer

log = logging.getLogger("tools.bench.scale")

INSERT_ROWS = 5000
ROUNDS = 40  # searches per latency figure
NQ = (1, PHOTO_NQ, 8)
INDEXES = {  # index build and search parameters per type; the service's defaults where it has them
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 128}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 32}),
    "IVF_PQ": ({"nlist": 1024, "m": 64, "nbits": 8}, {"nprobe": 32}),
    "DISKANN": ({}, {"search_list": 100}),
}


def server_rss_bytes(server: MilvusServer) -> int:
    """Resident memory of the Milvus server's processes."""
    total = 0
    for pid in server._binary_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def sustained(client, name: str, index_type: str, queries: np.ndarray, server: MilvusServer,  # noqa: ANN001
              nq: int = PHOTO_NQ, seconds: float = SUSTAINED_S) -> dict:
    """SUSTAINED_CLIENTS callers searching ``nq`` vectors a call, back to back, for
    ``seconds``: the server's own CPU seconds per query vector (what a query node pays; the
    callers' CPU is not counted), its calls per second and how busy it kept the machine's cores."""
    params = {"metric_type": "IP", "params": INDEXES[index_type][1]}
    deadline = time.perf_counter() + seconds

    def caller(offset: int) -> int:
        calls = 0
        while time.perf_counter() < deadline:
            first = ((offset + calls * SUSTAINED_CLIENTS) * nq) % (len(queries) - nq)
            client.search(name, data=[q.tolist() for q in queries[first:first + nq]], limit=10,
                          search_params=params, consistency_level="Bounded", timeout=120)
            calls += 1
        return calls

    start = time.perf_counter()
    with cpu_meter(server._binary_pids(), children=False) as cpu, ThreadPoolExecutor(SUSTAINED_CLIENTS) as pool:
        calls = sum(pool.map(caller, range(SUSTAINED_CLIENTS)))
    wall = time.perf_counter() - start
    return {"nq": nq, "clients": SUSTAINED_CLIENTS, "seconds": wall, "calls": calls, "calls_per_s": calls / wall,
            "server_cpu_s": cpu["seconds"], "server_core_ms_per_vector": cpu["seconds"] * 1000 / (calls * nq),
            "server_busy_cores": cpu["cores"]}


def exact_top10(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None = None) -> list[set[int]]:
    out = []
    for i in range(0, len(queries), 16):
        scores = queries[i:i + 16] @ vectors.T
        if mask is not None:
            scores[~mask[i:i + 16]] = -np.inf
        out += [set(np.argpartition(-row, 10)[:10].tolist()) for row in scores]
    return out


def create(client, name: str, dimension: int, partition_key: bool) -> None:  # noqa: ANN001 - MilvusClient
    from pymilvus import DataType, MilvusClient

    if client.has_collection(name):
        client.drop_collection(name)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("category", DataType.VARCHAR, max_length=64, is_partition_key=partition_key)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
    client.create_collection(name, schema=schema, consistency_level="Bounded", timeout=600)


def insert(client, name: str, vectors: np.ndarray, categories: np.ndarray) -> float:  # noqa: ANN001
    start = time.perf_counter()
    for i in range(0, len(vectors), INSERT_ROWS):
        client.insert(name, [{"pk": i + j, "category": f"c{categories[i + j]}", "vector": v}
                             for j, v in enumerate(vectors[i:i + INSERT_ROWS])], timeout=600)
    client.flush(name, timeout=3600)
    return time.perf_counter() - start


def build_index(client, name: str, index_type: str, timeout_s: float) -> float:  # noqa: ANN001
    client.release_collection(name, timeout=600)
    for existing in client.list_indexes(name):
        client.drop_index(name, existing, timeout=600)
    index = client.prepare_index_params()
    index.add_index("vector", index_type=index_type, metric_type="IP", params=INDEXES[index_type][0])
    start = time.perf_counter()
    client.create_index(name, index, timeout=3600, sync=False)  # built in the background; polled below
    while True:  # create_index returns before every segment is indexed
        info = client.describe_index(name, "vector", timeout=60)
        if str(info.get("state", "")).endswith("Finished") and info.get("pending_index_rows", 0) == 0:
            break
        if "Failed" in str(info.get("state", "")):
            raise RuntimeError(f"{index_type} build failed: {info}")
        if time.perf_counter() - start > timeout_s:
            raise RuntimeError(f"{index_type} not built after {timeout_s:.0f} s ({info.get('indexed_rows')} of "
                               f"{info.get('total_rows')} rows indexed, state {info.get('state')})")
        time.sleep(2)
    return time.perf_counter() - start


def searches(client, name: str, index_type: str, queries: np.ndarray, truth: list[set[int]],  # noqa: ANN001
             nq: int, categories: np.ndarray | None = None) -> dict:
    """ROUNDS calls of ``nq`` queries: latency percentiles and recall@10 against ``truth``; with
    ``categories`` (one per query, shared by the queries of one call), filtered by category."""
    params = {"metric_type": "IP", "params": INDEXES[index_type][1]}
    latencies, hits, asked = [], 0, 0
    for r in range(ROUNDS):
        first = (r * nq) % len(queries)
        expression = "" if categories is None else f'category == "c{categories[first]}"'
        t = time.perf_counter()
        found = client.search(name, data=[q.tolist() for q in queries[first:first + nq]], limit=10,
                              filter=expression, search_params=params, consistency_level="Bounded", timeout=120)
        latencies.append((time.perf_counter() - t) * 1000)
        for qi, row in enumerate(found):
            hits += len({h["id"] for h in row} & truth[first + qi])
            asked += 10
    return {"p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99), "recall10": hits / asked}


def search_figures(client, name: str, index_type: str, queries: np.ndarray, truth: list[set[int]],  # noqa: ANN001
                   filtered: list[set[int]], query_category: np.ndarray) -> dict:
    """Each nq of NQ unfiltered; nq=1 and nq=8 with the category filter."""
    figures = {}
    for nq in NQ:
        figures[f"nq{nq}"] = searches(client, name, index_type, queries, truth, nq)
    for nq in (1, 8):
        figures[f"nq{nq}_filtered"] = searches(client, name, index_type, queries, filtered, nq, query_category)
    return figures


def sealed_segments(uri: str, name: str) -> int:
    """Segments the query node searches for ``name`` (one per sealed segment, after compaction)."""
    from pymilvus import connections, utility

    connections.connect("segments", uri=uri)
    try:
        return len(utility.get_query_segment_info(name, using="segments"))
    finally:
        connections.disconnect("segments")


def pipeline_for(dimension: int) -> tuple[LocalPipeline, int]:
    """The pipeline whose embedder gives ``dimension`` (0: the served one, as served): the served
    embedder projected the way its shipped projection is fitted, at that dimension."""
    served = LocalPipeline.from_repository()
    served_dimension = int(served.embedder_manifest["serving"]["output"]["shape"][0])
    if dimension in (0, served_dimension):
        return served, served_dimension
    folder = build.builtin_model(served.embedder_manifest["name"], default_cache(), dimension=dimension)
    return LocalPipeline.with_embedder(folder), dimension


def run(args: argparse.Namespace) -> dict:
    from pymilvus import MilvusClient

    rng = np.random.default_rng(7)
    pipeline, dimension = pipeline_for(args.dimension)
    centers = real_centers(400, pipeline)
    log.info("making %d vectors of %d dimensions", args.vectors, dimension)
    vectors = np.concatenate([clustered_vectors(centers, min(100_000, args.vectors - i), seed=i)
                              for i in range(0, args.vectors, 100_000)])
    categories = rng.integers(0, args.categories, len(vectors))
    queries = clustered_vectors(centers, 320, seed=args.vectors + 1)
    query_category = np.repeat(rng.integers(0, args.categories, len(queries) // 8), 8)  # one per nq=8 call
    truth = exact_top10(vectors, queries)
    filtered = exact_top10(vectors, queries, categories[None, :] == query_category[:, None])
    result: dict = {"machine": machine(), "vectors": len(vectors), "dimension": dimension,
                    "segment_max_mb": args.segment_max_mb, "categories": args.categories,
                    "indexes": {}}  # machine() carries the date
    server = MilvusServer(args.work / "milvus", config={"dataCoord.segment.maxSize": args.segment_max_mb}).start()
    try:
        client = MilvusClient(uri=server.uri, timeout=600)
        idle_rss = server_rss_bytes(server)
        create(client, "scale", dimension, partition_key=False)
        result["insert_s"] = insert(client, "scale", vectors, categories)
        log.info("inserted in %.0f s", result["insert_s"])
        for index_type in args.index_types:
            entry: dict = {"params": INDEXES[index_type]}
            try:
                entry["build_s"] = build_index(client, "scale", index_type, args.build_timeout_s)
                start = time.perf_counter()
                client.load_collection("scale", timeout=3600)
                entry["load_s"] = time.perf_counter() - start
            except Exception as exc:  # an index type this server cannot build is reported, not fatal
                entry["error"] = str(exc)[:300]
                result["indexes"][index_type] = entry
                log.info("%s: %s", index_type, entry["error"])
                continue
            time.sleep(5)
            entry["segments"] = sealed_segments(server.uri, "scale")
            entry["rss_bytes"] = server_rss_bytes(server)
            entry["rss_over_idle_bytes"] = entry["rss_bytes"] - idle_rss
            entry.update(search_figures(client, "scale", index_type, queries, truth, filtered, query_category))
            entry["sustained"] = sustained(client, "scale", index_type, queries, server)
            result["indexes"][index_type] = entry
            log.info("%s: %s", index_type, json.dumps(entry))
        client.release_collection("scale", timeout=600)
        if args.partition_key_index:
            client.drop_collection("scale")
            create(client, "scale_pk", dimension, partition_key=True)
            insert(client, "scale_pk", vectors, categories)
            entry = {"index_type": args.partition_key_index,
                     "build_s": build_index(client, "scale_pk", args.partition_key_index, args.build_timeout_s)}
            client.load_collection("scale_pk", timeout=3600)
            entry.update(search_figures(client, "scale_pk", args.partition_key_index, queries, truth, filtered,
                                        query_category))
            result["partition_key"] = entry
            log.info("partition key: %s", json.dumps(entry))
        client.close()
    finally:
        server.remove()
    return result


def _latency(e: dict, key: str) -> str:
    return f"{e[key]['p50_ms']:.1f} / {e[key]['p99_ms']:.1f}" if key in e else "not measured"


def _sustained(e: dict) -> str:
    if "sustained" not in e:
        return "not measured"
    s = e["sustained"]
    return f"{s['server_core_ms_per_vector']:.2f} ({s['calls_per_s']:.1f}, {s['server_busy_cores']:.2f})"


def report(out: Path) -> str:
    """docs/benchmarks-scale.md from every results file in docs/scale/."""
    runs = load_runs()
    lines = ["# Milvus at catalog scale (`make bench-scale`)", "",
             "Generated by `python -m tools.bench.scale --report` from docs/scale/*.json (one file per run of "
             "`python -m tools.bench.scale --vectors N [--dimension D] [--segment-max-mb S]`). The real Milvus "
             "2.3.5 standalone server (the `milvus` wheel). Vectors: unit vectors scattered around 400 real "
             "embeddings of photo crops (through the served embedder, projected to the run's dimension by its "
             "learned whitening); each row has one of the categories; recall@10 against exact inner-product search "
             "(filtered: against exact search within the category). Memory: the server's resident set once the "
             "collection is loaded, less the idle server's; per vector = that / vectors (an upper bound: memory "
             "the server took while inserting or for an earlier index is not always returned to the system, which "
             "shows most at small sizes). Segments: the sealed segments the query node searches (runs before "
             "2026-12-06 did not count them). Latency: 40 calls, Bounded consistency, from the same machine; "
             f"nq={PHOTO_NQ} is one photo at the service's defaults. **Sustained**: {SUSTAINED_CLIENTS} callers "
             f"searching nq={PHOTO_NQ} back to back for {SUSTAINED_S} s: the server processes' own CPU seconds "
             "(user + system, from /proc) per query vector, the calls per second and the cores the server kept busy "
             "(runs before 2026-12-07 did not measure it). docs/capacity-plan.md "
             "(`python -m tools.bench.capacity`) turns these into a plan.", ""]
    for run in runs:
        n = run["vectors"]
        lines += [f"## {n:,} vectors of {run['dimension']} dimensions, segments up to {run['segment_max_mb']} MB, "
                  f"{run['categories']} categories", "",
                  f"Machine: {run['machine']}. Insert + flush: {run['insert_s']:.0f} s "
                  f"({n / run['insert_s']:.0f} rows/s).", "",
                  "| index | params | build s | load s | memory GB | bytes/vector | segments | recall@10 "
                  f"| nq=1 p50 / p99 ms | nq={PHOTO_NQ} p50 / p99 ms | nq=8 p50 / p99 ms | filtered recall@10 "
                  "| filtered nq=1 p50 / p99 ms | sustained: server core-ms per query vector (calls/s, busy cores) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in run["indexes"].items():
            if "error" in e:
                lines.append(f"| {name} | `{json.dumps(e['params'][0])}` | not built: {e['error']} ||||||||||||")
                continue
            over = e["rss_over_idle_bytes"]
            lines.append(
                f"| {name} | `{json.dumps(e['params'][0])}` `{json.dumps(e['params'][1])}` | {e['build_s']:.0f} | "
                f"{e['load_s']:.0f} | {over / 1e9:.2f} | {over / n:.0f} | {e.get('segments', '-')} | "
                f"{e['nq1']['recall10']:.3f} | {_latency(e, 'nq1')} | {_latency(e, f'nq{PHOTO_NQ}')} | "
                f"{_latency(e, 'nq8')} | {e['nq1_filtered']['recall10']:.3f} | {_latency(e, 'nq1_filtered')} | "
                f"{_sustained(e)} |")
        pk = run.get("partition_key")
        if pk:
            plain = run["indexes"].get(pk["index_type"], {})
            lines += ["", f"Category as the partition key ({pk['index_type']}, same rows, same filtered queries):", "",
                      "| collection | filtered nq=1 p50 / p99 ms | filtered nq=8 p50 / p99 ms | filtered recall@10 "
                      "| unfiltered nq=1 p50 / p99 ms | unfiltered nq=8 p50 / p99 ms |", "|---|---|---|---|---|---|"]
            for label, e in (("category a plain field", plain), ("category the partition key", pk)):
                if "nq1_filtered" in e:
                    lines.append(f"| {label} | {_latency(e, 'nq1_filtered')} | {_latency(e, 'nq8_filtered')} | "
                                 f"{e['nq1_filtered']['recall10']:.3f} | {_latency(e, 'nq1')} | {_latency(e, 'nq8')} |")
        lines.append("")
    out.write_text("\n".join(lines))
    return out.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=0, help="0: the served embedder's")
    parser.add_argument("--segment-max-mb", type=int, default=DEFAULT_SEGMENT_MB,
                        help="Milvus' dataCoord.segment.maxSize")
    parser.add_argument("--categories", type=int, default=100)
    parser.add_argument("--index-types", type=lambda v: v.split(","), default=list(INDEXES))
    parser.add_argument("--partition-key-index", default="IVF_SQ8",
                        help="index type of the partition-key comparison ('' skips it)")
    parser.add_argument("--build-timeout-s", type=float, default=7200,
                        help="an index not built by then is reported as such and skipped")
    parser.add_argument("--work", type=Path, default=BUILD / "scale-bench")
    parser.add_argument("--report", action="store_true", help="only write docs/benchmarks-scale.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", force=True)
    if not args.report:
        unknown = [t for t in args.index_types if t not in INDEXES]
        if unknown:
            parser.error(f"unknown index types {unknown}; known: {list(INDEXES)}")
        result = run(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        served = pipeline_for(0)[1]
        result_path(args.vectors, result["dimension"], args.segment_max_mb, served).write_text(
            json.dumps(result, indent=1))
    print(report(ROOT / "docs" / "benchmarks-scale.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
