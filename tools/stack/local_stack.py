"""Bring up the local stack (Triton + search service + Milvus Lite) for the demo, load tests,
benchmarks and tests, and tear it down again."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.channels import PLAINTEXT, ClientSecurity
from services.paths import BUILD, ROOT
from tools.models.repository import REPOSITORY
from tools.stack.triton_launcher import TritonServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_search_service(address: str, triton_url: str, milvus_uri: str, log_path: Path,
                         detach: bool = False, security: ClientSecurity = PLAINTEXT, timeout_s: float = 120,
                         **env: str) -> subprocess.Popen:
    """Start ``services.search.server`` and return once its health is SERVING (asked over
    ``security``: the service's port speaks TLS only when it is configured with it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "VS_TRITON_URL": triton_url, "VS_LISTEN": address, "VS_MILVUS_URI": milvus_uri,
                "PYTHONPATH": f"{BUILD / 'gen'}:{ROOT}", **env}
    process = subprocess.Popen([sys.executable, "-m", "services.search.server"], cwd=ROOT, env=full_env,
                               stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=detach)
    try:
        wait_health(address, process, health_pb2.HealthCheckResponse.SERVING, timeout_s, log_path, security)
    except TimeoutError:
        process.kill()
        raise
    return process


def wait_health(address: str, process: subprocess.Popen, status: int, timeout_s: float, log_path: Path,
                security: ClientSecurity = PLAINTEXT) -> None:
    """Block until the service's overall health is ``status``; raise (with its log tail) if
    the process exits first or the time runs out."""
    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    with security.channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"search service exited with {process.returncode}:\n{tail()}")
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"search service health never became {status}:\n{tail()}")


def stop_process(process: subprocess.Popen, timeout_s: float = 40) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Stack:
    triton: TritonServer
    service: subprocess.Popen
    address: str


@contextlib.contextmanager
def local_stack(work_dir: Path, repository: Path | None = None, **service_env: str) -> Iterator[Stack]:
    """Triton (model_repository/ with its CPU configs unless given) and the search service on
    free ports, Milvus Lite in ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    triton = TritonServer(repository or REPOSITORY, free_port(), free_port(), free_port(),
                          log_path=work_dir / "triton.log").start()
    try:
        address = f"127.0.0.1:{free_port()}"
        service = start_search_service(address, triton.grpc_url, str(work_dir / "catalog.db"),
                                       work_dir / "search.log", VS_METRICS_PORT="0", **service_env)
        try:
            yield Stack(triton, service, address)
        finally:
            stop_process(service)
    finally:
        triton.stop()
