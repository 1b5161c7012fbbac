"""Where the project keeps its generated files and its cross-clone cache."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"


def default_cache() -> Path:
    """Exports and tool environments that outlive a clone: $VS_CACHE_DIR or ~/.cache/visualsearch."""
    if os.environ.get("VS_CACHE_DIR"):
        return Path(os.environ["VS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visualsearch"
