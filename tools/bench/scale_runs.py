"""The results of ``make bench-scale`` runs (docs/scale/*.json): where they live, how a run is
named, and reading them back. Apart from tools/bench/scale.py so that the capacity plan reads
them without importing the servers the bench starts."""

from __future__ import annotations

import json
from pathlib import Path

from services.paths import ROOT
from services.search.config import Settings

RESULTS = ROOT / "docs" / "scale"
DEFAULT_SEGMENT_MB = 512  # Milvus 2.3's dataCoord.segment.maxSize
PHOTO_NQ = Settings().max_searched_objects + 1  # query vectors of one photo at the service's defaults
# The sustained load of a run: enough callers to keep the server's cores busy (its CPU per query
# vector, not a call's latency x every core, prices a query node), long enough to average.
SUSTAINED_CLIENTS = 4
SUSTAINED_S = 30


def result_path(vectors: int, dimension: int, segment_mb: int, served_dimension: int) -> Path:
    if (dimension, segment_mb) == (served_dimension, DEFAULT_SEGMENT_MB):
        return RESULTS / f"{vectors}.json"  # the name of the first runs'
    return RESULTS / f"{vectors}-{dimension}d-{segment_mb}mb.json"


def load_runs() -> list[dict]:
    """Every results file, by (dimension, segment size, vectors); older files lack the segment size."""
    runs = [json.loads(path.read_text()) for path in RESULTS.glob("*.json")]
    for r in runs:
        r.setdefault("segment_max_mb", DEFAULT_SEGMENT_MB)
    return sorted(runs, key=lambda r: (-r["dimension"], r["segment_max_mb"], r["vectors"]))
