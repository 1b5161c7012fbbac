"""How many CPUs this process may really use: a container's CPU limit (its cgroup quota), not
the host's core count that onnxruntime would otherwise size its thread pool to."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_quota(root: Path = CGROUP) -> float | None:
    """CPUs allowed by the cgroup's CPU quota (v2 cpu.max, v1 cfs quota/period); None = no limit."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu"
        if (v1 / "cpu.cfs_quota_us").is_file():
            quota = int((v1 / "cpu.cfs_quota_us").read_text())
            return None if quota <= 0 else quota / int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def cpu_limit(root: Path = CGROUP) -> int:
    """The quota rounded up, capped by the CPUs this process may run on; at least 1."""
    available = len(os.sched_getaffinity(0))
    quota = cgroup_quota(root)
    return max(1, min(available, math.ceil(quota))) if quota else max(1, available)
