"""Fixtures shared by both layers: real photos; for the integration layer, the real
tritonserver on model_repository/ with its CPU configs, and free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.local_stack import free_port
from tools.models.repository import REPOSITORY
from tools.sample_photos import load_photos
from tools.triton_launcher import TritonServer

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
__all__ = ["BUILD", "REPOSITORY", "ROOT", "free_port"]


def require(path: Path | str | None, what: str, how: str, required_in_ci: bool = True) -> str:
    """``path`` of a tool a test needs; without it the test skips and says ``how`` to get it,
    or fails in CI, whose `make test` installs it (unless ``required_in_ci`` is False)."""
    if path is not None and Path(path).is_file():
        return str(path)
    if required_in_ci and os.environ.get("CI"):
        pytest.fail(f"{what} is missing, although `make test` installs it: {how}")
    pytest.skip(f"{what} is not installed: {how}")


@pytest.fixture(scope="session")
def photos():
    return load_photos()


@pytest.fixture(scope="session")
def triton():
    if not (REPOSITORY / "detector" / "1" / "model.onnx").is_file():
        pytest.fail("no models in model_repository/: run `make models` (make test does)")
    server = TritonServer(REPOSITORY, free_port(), free_port(), free_port())
    with server:
        yield server


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """The real Milvus 2.3.5 standalone server (default ports: one per machine at a time)."""
    from tools.milvus_processes import MilvusServer

    server = MilvusServer(tmp_path_factory.mktemp("milvus-server") / "data").start()
    yield server
    server.remove()
