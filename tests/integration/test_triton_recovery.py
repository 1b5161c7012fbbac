"""How fast the service is back when Triton is, under load: after a long Triton outage (kill -9,
then a new tritonserver on the same ports), and after a killed Python stub (the local launcher
reloads the model). Each test prints what it measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import psutil

from services.api import pb
from services.paths import ROOT
from tests.integration.conftest import REPOSITORY, free_port
from tests.integration.service_process import ServiceProcess
from tools.sample_photos import encode
from tools.stack.demo_catalog import import_requests
from tools.stack.triton_launcher import TritonServer, probe_inference

OUTAGE_S = 90  # long enough that gRPC's default reconnect backoff (up to 120 s) would show
CONCURRENCY = 4


class Load:
    """CONCURRENCY callers searching without pause; records when each answer came and its code."""

    def __init__(self, svc: ServiceProcess, image: bytes) -> None:
        self.svc, self.image = svc, image
        self.answers: list[tuple[float, grpc.StatusCode]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(CONCURRENCY)]

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.svc.search.SearchByImage(pb.SearchByImageRequest(image=self.image), timeout=20)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
                time.sleep(0.05)  # a failing call returns at once: do not spin
            self.answers.append((time.monotonic(), code))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def first_ok_after(self, moment: float, timeout_s: float) -> float:
        """Seconds from ``moment`` to the first successful answer after it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = [t for t, code in list(self.answers) if t > moment and code == grpc.StatusCode.OK]
            if done:
                return min(done) - moment
            time.sleep(0.05)
        raise AssertionError(f"no successful search within {timeout_s:.0f}s; last codes "
                             f"{[c.name for _, c in self.answers[-8:]]}")

    def first_failure_after(self, moment: float, timeout_s: float) -> float:
        """When the first failed answer after ``moment`` came."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            failed = [t for t, code in list(self.answers) if t > moment and code != grpc.StatusCode.OK]
            if failed:
                return min(failed)
            time.sleep(0.05)
        raise AssertionError(f"no call failed within {timeout_s:.0f}s: the kill did not reach the serving path")


def test_a_returning_triton_is_used_within_two_seconds_after_a_long_outage(tmp_path, photos):
    ports = (free_port(), free_port(), free_port())
    triton = TritonServer(REPOSITORY, *ports, log_path=tmp_path / "triton.log").start()
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "svc.log",
                         VS_HEALTH_INTERVAL_S="5").start()
    try:
        svc.import_products(import_requests(photos)[:1])
        with Load(svc, encode(photos["coffee"].pixels)) as load:
            load.first_ok_after(time.monotonic(), 30)
            os.killpg(triton.process.pid, signal.SIGKILL)
            triton.process.wait()
            killed = time.monotonic()
            time.sleep(OUTAGE_S)
            assert not [c for t, c in load.answers if t > killed + 15 and c == grpc.StatusCode.OK]
            triton = TritonServer(REPOSITORY, *ports, log_path=tmp_path / "triton2.log").start()
            ready = time.monotonic()  # a real inference has just succeeded
            back = load.first_ok_after(ready, 30)
        print(f"\nTriton down {ready - killed:.0f} s under load (concurrency {CONCURRENCY}): first successful "
              f"search {back:.2f} s after Triton was ready again")
        assert back <= 2.0, f"the service took {back:.1f}s to use the returning Triton"
    finally:
        svc.stop()
        triton.stop()


def _stub_of(triton_pid: int, model: str) -> psutil.Process:
    for child in psutil.Process(triton_pid).children(recursive=True):
        if any(f"/{model}/1/model.py" in part for part in child.cmdline()):
            return child
    raise AssertionError(f"no Python stub of {model} under tritonserver {triton_pid}")


def test_a_killed_stub_is_reloaded_by_the_launcher_within_seconds(tmp_path, photos):
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tools.stack.triton_launcher", "run", f"--http-port={http}", f"--grpc-port={grpc_port}",
         f"--metrics-port={metrics}"],  # the launcher's default watch interval
        cwd=ROOT, stdout=open(tmp_path / "launcher.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    svc = None
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                probe_inference(f"127.0.0.1:{grpc_port}", timeout_s=10)
                break
            except Exception:
                assert time.monotonic() < deadline and launcher.poll() is None, (tmp_path / "launcher.log").read_text()
                time.sleep(1)
        svc = ServiceProcess(f"127.0.0.1:{grpc_port}", str(tmp_path / "catalog.db"), tmp_path / "svc.log").start()
        svc.import_products(import_requests(photos)[:1])
        triton_pid = next(c.pid for c in psutil.Process(launcher.pid).children() if "tritonserver" in c.name())
        with Load(svc, encode(photos["coffee"].pixels)) as load:
            load.first_ok_after(time.monotonic(), 30)
            _stub_of(triton_pid, "embedder").kill()
            killed = time.monotonic()
            first_failure = load.first_failure_after(killed, 20)  # calls already past the embedder may still pass
            cost = first_failure + load.first_ok_after(first_failure, 60) - killed
            failed = [c for t, c in load.answers if t > killed and c != grpc.StatusCode.OK]
        print(f"\nembedder stub killed under load: searches were back {cost:.1f} s after the kill "
              f"({len(failed)} failed calls) once the launcher reloaded it")
        assert cost < 10, f"a killed stub cost {cost:.1f}s"
    finally:
        if svc:
            svc.stop()
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(60)
