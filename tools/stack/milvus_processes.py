"""Local Milvus servers for tests and benchmarks: the real Milvus 2.3.5 standalone server
from the ``milvus`` wheel, and Milvus Lite's own gRPC server."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.stack.local_stack import free_port

DEFAULT_PORT = 19530
SERVER_PORTS = (DEFAULT_PORT, 2379, 9091)  # gRPC, embedded etcd, metrics
SHARED_STATE = "/tmp/milvus"


def _wait_until_serving(uri: str, timeout_s: float, log_path: Path, token: str = "") -> None:
    """Until a real request (listing collections) succeeds; the log tail on timeout."""
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            MilvusClient(uri, token=token, timeout=2).list_collections()
            return
        except Exception:
            time.sleep(0.3)
    log = log_path.read_text(errors="replace").splitlines()[-15:]
    raise TimeoutError(f"milvus at {uri} did not start:\n" + "\n".join(log))


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MilvusServer:
    """The real Milvus 2.3.5 standalone server from the `milvus` wheel (default ports).
    ``authorization``: users and privileges enforced, as deploy/ runs Milvus; ``admin_token``
    is then root with Milvus' initial password."""

    def __init__(self, data_dir: Path, authorization: bool = False, config: dict[str, object] | None = None) -> None:
        """``config``: milvus.yaml settings by dotted key (``dataCoord.segment.maxSize``)."""
        self.data_dir = data_dir
        self.config = dict(config or {})
        self.wrapper: subprocess.Popen | None = None
        self.uri = "http://127.0.0.1:19530"
        self.authorization = authorization
        self.admin_token = "root:Milvus" if authorization else ""
        self.service_token = ""  # the least-privilege user's, once someone provisions it

    def start(self, timeout_s: float = 180, attempts: int = 2) -> MilvusServer:
        """Start the server on its data directory, which is never deleted here (it holds the
        catalog). Its embedded etcd sometimes loses a leader election at start-up and the server
        then never serves (seen a few times), so a failed start is retried once, on the same data.

        Restarted within seconds of a kill -9, Milvus 2.3 does not serve until the previous
        process' etcd session has expired (its coordinators wait for the old session's lease:
        about 30 s, ``common.session.ttl``, plus registration retries; milvus-io/milvus#28183):
        the port stays closed and clients see UNAVAILABLE for up to about a minute, then it
        serves with every acknowledged row. ``timeout_s`` covers that wait."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout_s)
            except TimeoutError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout_s: float) -> MilvusServer:
        # a server still shutting down holds its embedded etcd's port: the new one would hang
        deadline = time.monotonic() + 30
        while any(_port_in_use(p) for p in SERVER_PORTS) and time.monotonic() < deadline:
            time.sleep(0.5)
        taken = [p for p in SERVER_PORTS if _port_in_use(p)]
        if taken:
            raise RuntimeError(f"ports {taken} are taken: another Milvus is running; stop it first")
        # the server keeps node ids under /tmp/milvus; a previous server's leftovers make it hang
        shutil.rmtree(SHARED_STATE, ignore_errors=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("milvus-server")
        flags = ["--authorization-enabled", "true"] if self.authorization else []
        for key, value in self.config.items():
            flags += ["--extra-config", f"{key}={value}"]
        self.wrapper = subprocess.Popen([str(exe), "--data", str(self.data_dir), *flags],
                                        stdout=open(self.data_dir / "server.log", "ab"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            _wait_until_serving(self.uri, timeout_s, self.data_dir / "server.log", self.admin_token)
        except TimeoutError:
            self.stop(kill=True)  # never leave a half-started server holding the ports
            raise
        return self

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
        shutil.rmtree(SHARED_STATE, ignore_errors=True)


class MilvusLiteServer:
    """Milvus Lite's own gRPC server (``milvus-lite server``), reached over http:// like a cluster."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> MilvusLiteServer:
        exe = Path(sys.executable).with_name("milvus-lite")
        self.process = subprocess.Popen(
            [str(exe), "server", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(self.data_dir.with_suffix(".log"), "ab"), stderr=subprocess.STDOUT)
        _wait_until_serving(self.uri, timeout_s, self.data_dir.with_suffix(".log"))
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: SIGINT can wait minutes for index builds
            self.process.wait(60)
