"""The real Triton client and Milvus store, and the unit tests' fakes, implement the same
Protocols (backends.Triton, backends.Store): a fake that drifts from the real class fails here,
not silently in a test that passes against it."""

from __future__ import annotations

import inspect

import pytest

from services.search.backends import Store, Triton
from services.search.milvus_store import MilvusStore
from services.search.triton_client import TritonClient
from tests.unit.fakes import FakeStore, FakeTriton


def members(protocol: type) -> list[str]:
    return [name for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))]


def own(cls: type, name: str):
    """The member as ``cls`` defines it (not inherited from the Protocol)."""
    for klass in cls.__mro__:
        if klass in (Triton, Store, object):
            break
        if name in vars(klass):
            return vars(klass)[name]
    return None


@pytest.mark.parametrize("protocol, implementations", [
    (Triton, [TritonClient, FakeTriton]), (Store, [MilvusStore, FakeStore]),
])
def test_real_and_fake_backends_implement_every_method_with_the_same_parameters(protocol, implementations):
    assert members(protocol)
    for name in members(protocol):
        wanted = getattr(protocol, name)
        for cls in implementations:
            found = own(cls, name)
            assert found is not None, f"{cls.__name__} lacks {name}"
            if isinstance(wanted, property):
                continue
            assert list(inspect.signature(found).parameters) == list(inspect.signature(wanted).parameters), \
                f"{cls.__name__}.{name} takes other parameters than {protocol.__name__}.{name}"
            assert inspect.iscoroutinefunction(found) == inspect.iscoroutinefunction(wanted), \
                f"{cls.__name__}.{name}: async where the Protocol is not, or the reverse"
