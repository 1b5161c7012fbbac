"""A load test's samples and ghz's summary of them: counts, latency distribution, status codes,
the JSON figures and the plots. Both generators (run.py, ghz.py) report through it."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PERCENTILES = (10, 25, 50, 75, 90, 95, 99)


@dataclass
class Sample:
    start: float  # seconds since the run began
    latency: float  # seconds
    code: str
    error: str = ""


@dataclass
class Report:
    samples: list[Sample] = field(default_factory=list)
    total_s: float = 0.0

    def latencies_ms(self, ok_only: bool = True) -> np.ndarray:
        return np.array([s.latency * 1000 for s in self.samples if not ok_only or s.code == "OK"])

    def summary(self) -> dict:
        lat = self.latencies_ms()
        codes = Counter(s.code for s in self.samples)
        errors = Counter(s.error for s in self.samples if s.error)
        stats = {"count": len(self.samples), "total_s": round(self.total_s, 3),
                 "rps": round(len(self.samples) / self.total_s, 2) if self.total_s else 0.0,
                 "status_codes": dict(codes), "errors": dict(errors.most_common(20))}
        if len(lat):
            stats.update({"average_ms": round(float(lat.mean()), 2), "fastest_ms": round(float(lat.min()), 2),
                          "slowest_ms": round(float(lat.max()), 2),
                          "latency_ms": {f"p{p}": round(float(np.percentile(lat, p)), 2) for p in PERCENTILES}})
        return stats


def format_summary(stats: dict) -> str:
    lines = ["Summary:", f"  Count:\t{stats['count']}", f"  Total:\t{stats['total_s']:.2f} s"]
    if "average_ms" in stats:
        lines += [f"  Slowest:\t{stats['slowest_ms']:.2f} ms", f"  Fastest:\t{stats['fastest_ms']:.2f} ms",
                  f"  Average:\t{stats['average_ms']:.2f} ms"]
    lines += [f"  Requests/sec:\t{stats['rps']:.2f}", "", "Latency distribution:"]
    for name, value in stats.get("latency_ms", {}).items():
        lines.append(f"  {name[1:]} % in {value:.2f} ms")
    lines += ["", "Status code distribution:"]
    lines += [f"  [{code}]\t{n} responses" for code, n in stats["status_codes"].items()]
    if stats["errors"]:
        lines += ["", "Error distribution:"] + [f"  [{n}]\t{msg}" for msg, n in stats["errors"].items()]
    return "\n".join(lines)


def plot(report: Report, out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
    lat = report.latencies_ms()
    paths = [out_dir / f"{slug}-histogram.png", out_dir / f"{slug}-over-time.png"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(lat, bins=40, color="#3572a5")
    ax.set(xlabel="latency (ms)", ylabel="requests", title=f"{title}: latency histogram")
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ok = [s for s in report.samples if s.code == "OK"]
    ax.scatter([s.start for s in ok], [s.latency * 1000 for s in ok], s=6, color="#3572a5", label="OK")
    bad = [s for s in report.samples if s.code != "OK"]
    if bad:
        ax.scatter([s.start for s in bad], [s.latency * 1000 for s in bad], s=8, color="#c0392b", label="error")
    ax.set(xlabel="time since start (s)", ylabel="latency (ms)", title=f"{title}: latency over time")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
