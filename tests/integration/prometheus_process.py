"""A real Prometheus (Debian's `prometheus` package) scraping local targets, for the tests of
the shipped recording rules, adapter queries and dashboard."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import require
from tests.integration.conftest import free_port

INSTALL = "apt-get install prometheus (Debian's package brings prometheus and promtool)"


def binary(name: str) -> str:
    """The binary's path (Debian's prometheus package installs both)."""
    return require(shutil.which(name), name, INSTALL)


def rule_groups(prometheus_rule: dict) -> dict:
    """A PrometheusRule object's groups as a plain Prometheus rules file."""
    return {"groups": prometheus_rule["spec"]["groups"]}


class Prometheus:
    def __init__(self, work: Path, targets: dict[str, tuple[str, dict[str, str]]], rules: dict) -> None:
        """``targets``: job -> (host:port, labels added to its series, like a ServiceMonitor's)."""
        self.work = work
        self.port = free_port()
        work.mkdir(parents=True, exist_ok=True)
        (work / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": [str(work / "rules.yaml")],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [address], "labels": labels}]}
                                     for job, (address, labels) in targets.items()]}
        (work / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={self.work / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.work / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=open(self.work / "prometheus.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
                return self
            except OSError:
                assert self.process.poll() is None, (self.work / "prometheus.log").read_text()[-2000:]
                time.sleep(0.3)
        raise TimeoutError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
