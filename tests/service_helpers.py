"""Run the real search service and a real Milvus server as subprocesses for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api import pb, pb_grpc
from tests.conftest import ROOT, free_port

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


class ServiceProcess:
    def __init__(self, triton_url: str, milvus_uri: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.env = {**os.environ, "VS_TRITON_URL": triton_url, "VS_MILVUS_URI": milvus_uri,
                    "VS_LISTEN": f"127.0.0.1:{self.port}", "VS_METRICS_PORT": str(self.metrics_port),
                    "VS_HEALTH_INTERVAL_S": "0.5", "VS_TRITON_TIMEOUT_S": "20", "VS_MILVUS_TIMEOUT_S": "5",
                    "PYTHONPATH": f"{ROOT / 'build' / 'gen'}:{ROOT}", **env}
        self.process: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_serving: bool = True) -> ServiceProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "services.search.server"], cwd=ROOT, env=self.env,
                                        stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.search = pb_grpc.VisualSearchStub(self.channel)
        self.catalog = pb_grpc.CatalogStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        if wait_serving:
            self.wait_health(health_pb2.HealthCheckResponse.SERVING, 120)
        return self

    def health_status(self, service: str = "") -> int | None:
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        except grpc.RpcError:
            return None

    def wait_health(self, status: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited {self.process.returncode}:\n{self.log_tail()}")
            if self.health_status() == status:
                return
            time.sleep(0.2)
        raise TimeoutError(f"health never became {status}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> int | None:
        if self.channel:
            self.channel.close()
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode if self.process else None

    def import_products(self, items: list[pb.ImportProductsRequest], timeout: float = 300) -> pb.ImportProductsResponse:
        return self.catalog.ImportProducts(iter(items), timeout=timeout)


class MilvusServer:
    """The real Milvus 2.3.5 standalone server from the `milvus` wheel (default ports)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.wrapper: subprocess.Popen | None = None
        self.uri = "http://127.0.0.1:19530"

    def start(self, timeout_s: float = 90) -> MilvusServer:
        from pymilvus import MilvusClient

        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("milvus-server")
        self.wrapper = subprocess.Popen([str(exe), "--data", str(self.data_dir)],
                                        stdout=open(self.data_dir / "server.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                MilvusClient(self.uri, timeout=2).get_server_version()
                return self
            except Exception:
                time.sleep(0.5)
        raise TimeoutError("milvus server did not start")

    def _binary_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-f", f"{self.data_dir}/bin/milvus run"], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def stop(self, kill: bool = False) -> None:
        # SIGTERM must reach the milvus binary itself; the Python wrapper would leave it running.
        for pid in self._binary_pids():
            os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + 30
        while self._binary_pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self._binary_pids():
            os.kill(pid, signal.SIGKILL)
        if self.wrapper and self.wrapper.poll() is None:
            os.killpg(self.wrapper.pid, signal.SIGKILL)
            self.wrapper.wait()

    def pause(self) -> None:
        """Freeze the server (a hung or partitioned Milvus): calls to it time out."""
        for pid in self._binary_pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self._binary_pids():
            os.kill(pid, signal.SIGCONT)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree("/tmp/milvus", ignore_errors=True)


class MilvusLiteServer:
    """Milvus Lite's own gRPC server (``milvus-lite server``), reached over http:// like a cluster."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> MilvusLiteServer:
        from pymilvus import MilvusClient

        exe = Path(sys.executable).with_name("milvus-lite")
        self.process = subprocess.Popen(
            [str(exe), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(self.data_dir.with_suffix(".log"), "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                MilvusClient(self.uri, timeout=2).list_collections()
                return self
            except Exception:
                time.sleep(0.3)
        raise TimeoutError("milvus-lite server did not start")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: SIGINT can wait minutes for index builds
            self.process.wait(60)
