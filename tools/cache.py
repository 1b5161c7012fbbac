"""The cross-clone cache of model exports and tool environments."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache() -> Path:
    """$VS_CACHE_DIR, else ~/.cache/visualsearch (exports and environments outlive a clone)."""
    if os.environ.get("VS_CACHE_DIR"):
        return Path(os.environ["VS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visualsearch"
