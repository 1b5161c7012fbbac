"""Run the real search service as a subprocess for end-to-end tests, with client stubs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.api import pb, pb_grpc
from services.channels import PLAINTEXT, ClientSecurity
from tests.integration.conftest import free_port
from tools.stack.local_stack import start_search_service, stop_process, wait_health


class ServiceProcess:
    def __init__(self, triton_url: str, milvus_uri: str, log_path: Path, security: ClientSecurity = PLAINTEXT,
                 **env: str) -> None:
        """``security``: how the test's own stubs (and the start-up health wait) connect."""
        self.security = security
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.triton_url, self.milvus_uri = triton_url, milvus_uri
        self.env = {"VS_METRICS_PORT": str(self.metrics_port), "VS_HEALTH_INTERVAL_S": "0.5",
                    "VS_TRITON_TIMEOUT_S": "20", "VS_MILVUS_TIMEOUT_S": "5", **env}
        self.process: subprocess.Popen | None = None
        self.channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        """Start the service and return once its health is SERVING."""
        self.process = start_search_service(self.address, self.triton_url, self.milvus_uri, self.log_path,
                                            security=self.security, **self.env)
        self.channel = self.security.channel(self.address)
        self.search = pb_grpc.VisualSearchStub(self.channel)
        self.catalog = pb_grpc.CatalogStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        return self

    def health_status(self, service: str = "") -> int | None:
        try:
            return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
        except grpc.RpcError:
            return None

    def wait_health(self, status: int, timeout_s: float) -> None:
        wait_health(self.address, self.process, status, timeout_s, self.log_path, self.security)

    def stop(self) -> int | None:
        if self.channel:
            self.channel.close()
        if self.process:
            stop_process(self.process)
        return self.process.returncode if self.process else None

    def import_products(self, items: list[pb.ImportProductsRequest], timeout: float = 300) -> pb.ImportProductsResponse:
        return self.catalog.ImportProducts(iter(items), timeout=timeout)
