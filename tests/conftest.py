"""Shared fixtures: the real tritonserver on the CPU repository, real photos, free ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.sample_photos import load_photos
from services.stack import free_port
from services.triton.launcher import TritonServer

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
CPU_REPOSITORY = BUILD / "model_repository" / "cpu"
__all__ = ["BUILD", "CPU_REPOSITORY", "ROOT", "free_port"]


@pytest.fixture(scope="session")
def photos():
    return load_photos()


@pytest.fixture(scope="session")
def triton():
    if not (CPU_REPOSITORY / "detect_and_embed" / "config.pbtxt").is_file():
        pytest.fail("no rendered model repository: run `make models` (make test does)")
    server = TritonServer(CPU_REPOSITORY, free_port(), free_port(), free_port())
    with server:
        yield server
