"""Start the real ``tritonserver`` from the ``nvidia-pytriton`` wheel on model_repository/ (local
runs, tests, benchmarks; Kubernetes runs Triton's own image).

The wheel's binary (Triton 2.51, the 24.10 release) runs on a CPU-only machine, with these
sharp edges handled here: the Python backend folder is assembled from the wheel (library,
utils, the stub built for this interpreter's Python version); the wheel's libraries and
this interpreter's LIBDIR go on LD_LIBRARY_PATH; this venv goes first on PATH, because the
stub takes its interpreter from there and needs numpy < 2 (with numpy 2 every output
tensor silently arrives empty); files are copied only when changed and through a rename
(overwriting libtriton_python.so in place segfaults a running server); stubs that crashed
leave regions in /dev/shm, removed here; a model whose stub died still reports ready while
every request fails, so readiness is a real inference and a dead stub is recovered by
unloading and loading its model (a plain load of an unchanged model is a no-op).

CLI:  python -m tools.stack.triton_launcher run   [--repository model_repository] [--config-name cpu]
      python -m tools.stack.triton_launcher start  (background, writes a pid file) | stop
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.paths import BUILD, ROOT
from services.search import triton_client
from tools.cache import default_cache
from tools.models.repository import CPU_CONFIG, REPOSITORY

log = logging.getLogger("tools.stack.triton_launcher")

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "vs-triton-"
STUB_FAILURE = re.compile(r"Stub process '(\w+?)_\d+_\d+' is not healthy")


class TritonStartError(RuntimeError):
    """Triton did not become able to serve a real inference."""


def pytriton_root() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def _copy_if_changed(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    shutil.copy2(src, tmp)
    os.replace(tmp, dst)  # a rename never rewrites the inode a running server has mapped


def prepare_backends(cache: Path) -> Path:
    """A backend folder with the Python backend for this interpreter's version."""
    triton = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton ships no Python backend stub for Python {version}")
    backends = cache / f"triton-backends-py{version}"
    python_dir = backends / "python"
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        _copy_if_changed(triton / "backends" / "python" / name, python_dir / name)
    _copy_if_changed(stub, python_dir / "triton_python_backend_stub")
    (python_dir / "triton_python_backend_stub").chmod(0o755)
    return backends


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(pytriton_root().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in [*libs, env.get("LD_LIBRARY_PATH", "")] if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    # The Python models import services.triton_models from this checkout.
    env["PYTHONPATH"] = ":".join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_shm() -> list[str]:
    """Remove shared-memory regions left by launchers whose process is gone."""
    removed = []
    for path in SHM_DIR.glob(f"{SHM_PREFIX}*"):
        match = re.match(rf"{SHM_PREFIX}(\d+)-", path.name)
        if match and not _pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    if removed:
        log.info("removed %d stale /dev/shm regions", len(removed))
    return removed


@dataclass(frozen=True)
class GrpcTLS:
    """TLS on Triton's gRPC port (``--grpc-use-ssl``); mutual when ``client_ca`` is given, and
    the certificate the launcher's own probes present then."""

    cert: Path
    key: Path
    ca: Path  # signed ``cert``: what clients verify it with
    client_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    def server_args(self) -> list[str]:
        args = ["--grpc-use-ssl=true", f"--grpc-server-cert={self.cert}", f"--grpc-server-key={self.key}"]
        if self.client_ca:
            args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.client_ca}"]
        return args

    def client_kwargs(self) -> dict[str, object]:
        return {"ssl": True, "root_certificates": str(self.ca),
                "private_key": str(self.client_key) if self.client_key else None,
                "certificate_chain": str(self.client_cert) if self.client_cert else None}


def probe_inference(grpc_url: str, timeout_s: float = 30.0, tls: GrpcTLS | None = None) -> None:
    """Run one real ensemble inference; raises on any failure (incl. a dead stub)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url, **(tls.client_kwargs() if tls else {}))
    try:
        model, inputs = triton_client.detect_request(triton_client.PROBE_IMAGE)
        result = client.infer(model, inputs, client_timeout=timeout_s)
        embeddings = result.as_numpy(triton_client.EMBEDDINGS)
        if embeddings is None or embeddings.size == 0:
            raise TritonStartError("probe inference returned no embedding (numpy>=2 in the stub env?)")
    finally:
        client.close()


@dataclass
class TritonServer:
    """One local ``tritonserver`` process serving ``repository``."""

    repository: Path = REPOSITORY
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    cache: Path = field(default_factory=default_cache)
    log_path: Path | None = None
    bind_address: str = "127.0.0.1"
    startup_timeout_s: float = 300.0
    config_name: str = CPU_CONFIG  # "" = the canonical (GPU) config.pbtxt everywhere
    grpc_tls: GrpcTLS | None = None
    process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = prepare_backends(self.cache)
        return [
            str(pytriton_root() / "bin" / "tritonserver"),
            f"--model-repository={Path(self.repository).resolve()}",
            f"--backend-directory={backends}",
            f"--http-port={self.http_port}", f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}", f"--http-address={self.bind_address}",
            f"--grpc-address={self.bind_address}", f"--metrics-address={self.bind_address}",
            "--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
            "--model-control-mode=explicit", "--load-model=*",
            *([f"--model-config-name={self.config_name}"] if self.config_name else []),
            *(self.grpc_tls.server_args() if self.grpc_tls else []),
            "--exit-timeout-secs=10", "--log-verbose=0",
            f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX}{os.getpid()}-{self.grpc_port}-",
        ]

    def start(self) -> TritonServer:
        missing = [p for p in ("detector/1/model.onnx", "embedder/1/model.onnx")
                   if not (Path(self.repository) / p).is_file()]
        if missing:
            raise TritonStartError(f"{self.repository} lacks {missing}: run `make models`")
        clean_stale_shm()
        self.log_path = self.log_path or Path(tempfile.gettempdir()) / f"tritonserver-{self.grpc_port}.log"
        logfile = open(self.log_path, "ab")
        log.info("starting tritonserver (grpc %d, http %d, metrics %d), log %s",
                 self.grpc_port, self.http_port, self.metrics_port, self.log_path)
        self.process = subprocess.Popen(self.command(), env=server_env(), stdout=logfile,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        logfile.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise TritonStartError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                probe_inference(self.grpc_url, timeout_s=60, tls=self.grpc_tls)
                log.info("tritonserver ready: a real inference succeeded")
                return
            except Exception as exc:  # not up yet, models loading
                last_error = exc
                time.sleep(0.5)
        raise TritonStartError(f"no successful inference within {self.startup_timeout_s}s: {last_error}\n"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def recover_stubs(self) -> list[str]:
        """Reload the models whose Python stub died (such a model reports ready while every
        request fails). Returns the reloaded models; [] when a real inference works."""
        import tritonclient.grpc as grpcclient

        try:
            probe_inference(self.grpc_url, timeout_s=60, tls=self.grpc_tls)
            return []
        except Exception as exc:
            message = str(exc)
        log.warning("probe inference failed (%s); reloading models", message)
        broken = set(STUB_FAILURE.findall(message))
        tls = self.grpc_tls.client_kwargs() if self.grpc_tls else {}
        client = grpcclient.InferenceServerClient(self.grpc_url, **tls)
        try:
            names = [entry.name for entry in client.get_model_repository_index().models]
            # load_model on a loaded, unchanged model is a no-op: unload first to restart its stub
            targets = [n for n in names if n in broken] or names
            for name in targets:
                client.unload_model(name)
            for name in targets:
                client.load_model(name)
        finally:
            client.close()
        probe_inference(self.grpc_url, timeout_s=60, tls=self.grpc_tls)
        log.info("recovered: reloaded %s", targets)
        return targets

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not exit in %.0fs; killing it", timeout_s)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        prefix = f"{SHM_PREFIX}{os.getpid()}-{self.grpc_port}-"
        for path in SHM_DIR.glob(f"{prefix}*"):
            path.unlink(missing_ok=True)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _supervise(server: TritonServer, interval_s: float) -> None:
    stopping = threading.Event()  # set from the signal handler; wakes the wait at once
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopping.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stopping.set())
    server.start()
    while not stopping.wait(interval_s):
        if server.process.poll() is not None:
            log.error("tritonserver died (exit %s); restarting", server.process.returncode)
            server.start()
            continue
        try:
            server.recover_stubs()
        except Exception as exc:
            log.error("stub recovery failed: %s", exc)
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the local tritonserver")
    parser.add_argument("action", choices=["run", "start", "stop"])
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--config-name", default=CPU_CONFIG,
                        help="Triton --model-config-name: 'cpu' serves the ONNX models with onnxruntime in the "
                             "Python backend; '' uses the canonical GPU configs")
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("VS_TRITON_HTTP_PORT", 8000)))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("VS_TRITON_GRPC_PORT", 8001)))
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("VS_TRITON_METRICS_PORT", 8002)))
    parser.add_argument("--pid-file", type=Path, default=BUILD / "run" / "triton.pid")
    # A probe is one tiny inference (a few ms); every 2 s keeps a killed stub's outage to seconds.
    parser.add_argument("--watch-interval", type=float, default=2.0,
                        help="seconds between health probes (run/start): dead stubs are reloaded")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    server = TritonServer(args.repository, args.http_port, args.grpc_port, args.metrics_port,
                          config_name=args.config_name)
    if args.action == "stop":
        if not args.pid_file.exists():
            log.info("no pid file %s: nothing to stop", args.pid_file)
            return 0
        pid = int(args.pid_file.read_text())
        if _pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(300):
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
        args.pid_file.unlink(missing_ok=True)
        return 0
    if args.action == "start":
        # A supervisor child keeps running after we return; we return once it is ready.
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
        log_path = args.pid_file.with_suffix(".log")
        child = subprocess.Popen(
            [sys.executable, "-m", "tools.stack.triton_launcher", "run", f"--repository={args.repository}",
             f"--config-name={args.config_name}",
             f"--http-port={args.http_port}", f"--grpc-port={args.grpc_port}",
             f"--metrics-port={args.metrics_port}", f"--watch-interval={args.watch_interval}"],
            cwd=ROOT, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        args.pid_file.write_text(str(child.pid))
        deadline = time.monotonic() + server.startup_timeout_s + 30
        while time.monotonic() < deadline:
            if child.poll() is not None:
                log.error("triton supervisor exited; see %s", log_path)
                return 1
            try:
                probe_inference(server.grpc_url, timeout_s=30)
                log.info("triton ready on %s (supervisor pid %d)", server.grpc_url, child.pid)
                return 0
            except Exception:
                time.sleep(1)
        return 1
    try:
        _supervise(server, args.watch_interval)
    except TritonStartError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
