"""The integration layer's servers: the real tritonserver on model_repository/ with its CPU
configs, the real Milvus 2.3.5 server, and free ports."""

from __future__ import annotations

import pytest

from tools.models.repository import REPOSITORY
from tools.stack.local_stack import free_port
from tools.stack.triton_launcher import TritonServer

__all__ = ["REPOSITORY", "free_port"]


@pytest.fixture(scope="session")
def triton():
    if not (REPOSITORY / "detector" / "1" / "model.onnx").is_file():
        pytest.fail("no models in model_repository/: run `make models` (make test does)")
    server = TritonServer(REPOSITORY, free_port(), free_port(), free_port())
    with server:
        yield server


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The real Milvus 2.3.5 standalone server (default ports: one per machine at a time), with
    authorization on as deploy/ runs Milvus. Tests give the service ``service_token``: a user
    holding exactly ``services.milvus_access.PRIVILEGES`` (what deploy/README tells operators
    to grant), so a privilege missing from that list fails the tests that need it."""
    from pymilvus import MilvusClient

    from services import milvus_access
    from tools.stack.milvus_processes import MilvusServer

    server = MilvusServer(tmp_path_factory.mktemp("milvus-server") / "data", authorization=True).start()
    milvus_access.provision(MilvusClient(server.uri, token=server.admin_token), SERVICE_USER, SERVICE_PASSWORD)
    server.service_token = f"{SERVICE_USER}:{SERVICE_PASSWORD}"
    yield server
    server.remove()


SERVICE_USER, SERVICE_PASSWORD = "visualsearch", "a-test-only-password"
