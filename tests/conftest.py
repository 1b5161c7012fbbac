"""What both layers share: paths, ``require`` for external tools, the real photos, and the
layer markers (every test under tests/unit is ``unit``, under tests/integration ``integration``).
The integration layer's servers are in tests/integration/conftest.py: the unit layer never
imports the launcher or the stack."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from services.paths import BUILD, ROOT
from tools.sample_photos import load_photos

__all__ = ["BUILD", "ROOT", "require"]

LAYERS = ("unit", "integration")
_layer_seconds: dict[str, float] = dict.fromkeys(LAYERS, 0.0)


def require(path: Path | str | None, what: str, how: str, required_in_ci: bool = True) -> str:
    """``path`` of a tool a test needs; without it the test skips and says ``how`` to get it,
    or fails in CI, whose `make test` installs it (unless ``required_in_ci`` is False)."""
    if path is not None and Path(path).is_file():
        return str(path)
    if required_in_ci and os.environ.get("CI"):
        pytest.fail(f"{what} is missing, although `make test` installs it: {how}")
    pytest.skip(f"{what} is not installed: {how}")


def pytest_configure(config):
    config.addinivalue_line("markers", "unit: one module at a time, fakes for Triton and Milvus (seconds)")
    config.addinivalue_line("markers", "integration: the real tritonserver, Milvus, Prometheus, tools (minutes)")


def _layer(item) -> str | None:
    parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
    return parts[0] if parts and parts[0] in LAYERS else None


def pytest_collection_modifyitems(items):
    for item in items:
        layer = _layer(item)
        if layer:
            item.add_marker(getattr(pytest.mark, layer))
    # the unit layer first: its answer comes in seconds, and the integration servers' session
    # teardown is then counted in the integration layer's time
    items.sort(key=lambda item: LAYERS.index(_layer(item)) if _layer(item) else len(LAYERS))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.perf_counter()
    yield
    layer = _layer(item)
    if layer:
        _layer_seconds[layer] += time.perf_counter() - start


def pytest_terminal_summary(terminalreporter):
    spent = {layer: seconds for layer, seconds in _layer_seconds.items() if seconds}
    if spent:
        terminalreporter.write_line("time per layer: " + ", ".join(f"{layer} {seconds:.2f} s"
                                                                   for layer, seconds in spent.items()))


@pytest.fixture(scope="session")
def photos():
    return load_photos()
