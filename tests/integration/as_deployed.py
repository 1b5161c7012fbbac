"""Run a container of the rendered manifests on this machine as its manifest says: its own
command (or its image's ENTRYPOINT), args and environment (``env``, ``envFrom`` of the rendered
ConfigMaps, Secrets given by the test), its own probes and the ports its Services and
ServiceMonitors name.

What cannot be the same here is mapped, and only that: each volume's mountPath to a local
folder holding what the manifests mount there (certificates, policy, models, a catalog), the
in-cluster host names to 127.0.0.1 (ports kept), and an image's executables to this machine's
equivalents (``python`` -> this interpreter; ``tritonserver`` -> the nvidia-pytriton binary with
its backend folder, which the NGC image has at its default path). The root filesystem is not
read-only here, so HOME and the working directory point to an empty read-only folder: a write
outside the mounted volumes fails as it would in the pod.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT


@dataclass
class Mapping:
    folders: dict[str, Path] = field(default_factory=dict)  # mountPath -> local folder
    hosts: tuple[str, ...] = ()  # in-cluster names that resolve to 127.0.0.1 here
    executables: dict[str, list[str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)  # envFrom secretRef name -> data
    env: dict[str, str] = field(default_factory=dict)  # the image's own environment (ENV lines)

    def localise(self, value: str) -> str:
        """A path under a mapped folder becomes the local one; a mapped host's address 127.0.0.1."""
        for mount in sorted(self.folders, key=len, reverse=True):
            value = re.sub(rf"(?<![\w/.-]){re.escape(mount)}(?=/|:|,|$)", str(self.folders[mount]), value)
        for host in sorted(self.hosts, key=len, reverse=True):
            # only as an address (host:port): a certificate name to expect stays what it is
            value = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=:\d)", "127.0.0.1", value)
        return value


def entrypoint(dockerfile: str) -> list[str]:
    """The image's ENTRYPOINT (exec form), from its Dockerfile; [] where it keeps its base's,
    which runs its arguments (the NGC images' nvidia_entrypoint.sh)."""
    for line in (ROOT / "deploy" / "docker" / dockerfile).read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return json.loads(line.removeprefix("ENTRYPOINT"))
    return []


def mounts_checked(pod: dict, container: dict, mapping: Mapping) -> None:
    """Every volume the container mounts is mapped, and the test filled the folder (or the
    volume is an emptyDir)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        path = mount["mountPath"]
        if path in ("/tmp", "/dev/shm"):
            continue  # the same here
        assert path in mapping.folders, f"{container['name']}: no local folder for {path}"
        if "emptyDir" not in volumes[mount["name"]]:
            assert any(mapping.folders[path].iterdir()), f"{container['name']}: {path} is mounted but empty"


def command_line(container: dict, image_entrypoint: list[str], mapping: Mapping) -> list[str]:
    argv = [*(container.get("command") or image_entrypoint), *container.get("args", [])]
    head = mapping.executables.get(argv[0], [argv[0]])
    return [*head, *(mapping.localise(a) for a in argv[1:])]


def environment(container: dict, objects: list[dict], mapping: Mapping) -> dict[str, str]:
    env = dict(mapping.env)
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            env.update(next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name)["data"])
        else:
            env.update(mapping.secrets[source["secretRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return {k: mapping.localise(v) for k, v in env.items()}


@dataclass
class Running:
    container: dict
    process: subprocess.Popen
    log_path: Path

    def tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-25:])

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        return next(p["containerPort"] for p in self.container["ports"] if p["name"] == name_or_number)

    def probe(self, probe: dict) -> bool:
        """One run of a Kubernetes probe (grpc or httpGet), with its own timeout."""
        timeout = probe.get("timeoutSeconds", 1)
        if "grpc" in probe:
            with grpc.insecure_channel(f"127.0.0.1:{probe['grpc']['port']}") as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout)
                except grpc.RpcError:
                    return False
                return reply.status == health_pb2.HealthCheckResponse.SERVING
        get = probe["httpGet"]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port(get['port'])}{get['path']}",
                                        timeout=timeout) as reply:
                return 200 <= reply.status < 400
        except OSError:
            return False

    def wait_started(self) -> None:
        """The startup probe, as the kubelet runs it: up to failureThreshold x periodSeconds."""
        probe = self.container["startupProbe"]
        deadline = time.monotonic() + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.container['name']} exited:\n{self.tail()}"
            if self.probe(probe):
                return
            time.sleep(1)
        raise AssertionError(f"{self.container['name']}: startup probe never passed:\n{self.tail()}")

    def wait_ready(self, timeout_s: float) -> None:
        """The readiness probe every periodSeconds until it passes (a pod is not Ready before)."""
        probe = self.container["readinessProbe"]
        deadline = time.monotonic() + timeout_s
        while not self.probe(probe):
            assert self.process.poll() is None, f"{self.container['name']} exited:\n{self.tail()}"
            assert time.monotonic() < deadline, f"{self.container['name']} never ready:\n{self.tail()}"
            time.sleep(probe.get("periodSeconds", 10))

    def metrics(self, port: int, path: str = "/metrics") -> set[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return {family.name for family in text_string_to_metric_families(reply.read().decode())}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(pod: dict, container: dict, objects: list[dict], mapping: Mapping, image_entrypoint: list[str],
          work: Path, cwd: Path | None = None) -> Running:
    """``cwd``: where the image's own import path points (default: the read-only HOME)."""
    mounts_checked(pod, container, mapping)
    home = work / f"{container['name']}-readonly-home"
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o555)
    env = {"PATH": os.environ.get("PATH", ""), **environment(container, objects, mapping), "HOME": str(home)}
    argv = command_line(container, image_entrypoint, mapping)
    log_path = work / f"{container['name']}.log"
    with open(log_path, "ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        process = subprocess.Popen(argv, env=env, cwd=cwd or home, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return Running(container, process, log_path)


def run_to_completion(pod: dict, container: dict, objects: list[dict], mapping: Mapping,
                      image_entrypoint: list[str], work: Path, timeout_s: float) -> tuple[int, str]:
    """A Job's container: its exit code and log."""
    running = start(pod, container, objects, mapping, image_entrypoint, work)
    try:
        code = running.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        running.stop()
        raise AssertionError(f"{container['name']} still running after {timeout_s} s:\n{running.tail()}") from None
    return code, running.log_path.read_text(errors="replace")


def image_env(dockerfile: str) -> dict[str, str]:
    """The ``ENV`` lines of an image (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for line in (ROOT / "deploy" / "docker" / dockerfile).read_text().splitlines():
        if line.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(line[4:]))
    return env

