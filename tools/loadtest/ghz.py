"""The real ghz (https://ghz.sh) driving SearchByImage, its report read into the same Report
the in-repo generator produces (so text, JSON and plots are made the same way)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from services.api import PROTOSET, pb
from services.channels import PLAINTEXT, ClientSecurity
from services.paths import ROOT
from tools.loadtest.report import Report, Sample

CALL = "visualsearch.v1.VisualSearch.SearchByImage"
# This workplace keeps the real ghz and grpcurl beside the checkout; elsewhere $VS_GHZ /
# $VS_GRPCURL or the tool on PATH.
BESIDE_CHECKOUT = ROOT.parent / "shared" / "tools" / "bin"


def find(tool: str = "ghz") -> Path | None:
    """The ``ghz`` (or ``grpcurl``) binary to use, or None."""
    for candidate in (os.environ.get(f"VS_{tool.upper()}"), BESIDE_CHECKOUT / tool, shutil.which(tool)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def command(binary: Path, address: str, payload: Path, concurrency: int, count: int | None,
            duration_s: float | None, rps: float | None, timeout_s: float, security: ClientSecurity) -> list[str]:
    if not PROTOSET.is_file():
        raise FileNotFoundError(f"{PROTOSET} is missing: run `make proto`")
    args = [str(binary), "--protoset", str(PROTOSET), "--call", CALL, "--binary", "--binary-file", str(payload),
            "-c", str(concurrency), "--timeout", f"{timeout_s}s", "--format", "json",
            "--max-recv-message-size", "64MB", "--max-send-message-size", "64MB"]
    args += ["-n", str(count)] if count is not None else ["-z", f"{duration_s}s"]
    if rps:
        args += ["--rps", str(int(rps))]
    if security.ca:
        args += ["--cacert", security.ca] + (["--cert", security.cert, "--key", security.key] if security.cert else [])
        if security.server_name:
            args += ["--cname", security.server_name]
        if security.token_file:
            token = Path(security.token_file).read_text().strip()
            args += ["--metadata", json.dumps({"authorization": f"Bearer {token}"})]
    else:
        args.append("--insecure")
    return [*args, address]


def to_report(ghz_json: dict) -> Report:
    details = ghz_json.get("details") or []
    times = [dt.datetime.fromisoformat(d["timestamp"]) for d in details]
    begin = min(times) if times else None
    samples = [Sample((t - begin).total_seconds(), d["latency"] / 1e9, d.get("status") or "OK",
                      d.get("error", "")) for t, d in zip(times, details, strict=True)]
    return Report(samples, ghz_json["total"] / 1e9)


def run(address: str, request: pb.SearchByImageRequest, concurrency: int, count: int | None = None,
        duration_s: float | None = None, rps: float | None = None, timeout_s: float = 20,
        security: ClientSecurity = PLAINTEXT, binary: Path | None = None) -> Report:
    binary = binary or find()
    if binary is None:
        raise FileNotFoundError("ghz not found (set VS_GHZ or put ghz on PATH)")
    with tempfile.TemporaryDirectory(prefix="vs-ghz-") as tmp:
        payload = Path(tmp) / "request.bin"
        payload.write_bytes(request.SerializeToString())
        result = subprocess.run(command(binary, address, payload, concurrency, count, duration_s, rps, timeout_s,
                                        security), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ghz failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return to_report(json.loads(result.stdout))
