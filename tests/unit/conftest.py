"""The search and catalog logic wired to in-memory fakes of Triton and Milvus."""

from __future__ import annotations

import asyncio

import pytest

from services.search.backends import Backends
from services.search.catalog import Catalog
from services.search.config import Settings
from services.search.search import Search
from tests.unit.fakes import FakeStore, FakeTriton


@pytest.fixture
def settings():
    return Settings.from_env({})


@pytest.fixture
def fake_triton():
    return FakeTriton()


@pytest.fixture
def fake_store():
    return FakeStore()


@pytest.fixture
def backends(fake_triton, fake_store):
    backends = Backends(fake_triton, fake_store)
    assert asyncio.run(backends.probe()) == {"triton": None, "milvus": None}
    return backends


@pytest.fixture
def search(settings, backends):
    return Search(settings, backends)


@pytest.fixture
def catalog(settings, backends):
    return Catalog(settings, backends)


def no_deadline() -> None:
    return None
