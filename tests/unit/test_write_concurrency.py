"""Which catalog writes overlap (WriteLocks) and how waiting requests share Milvus calls
(Coalescer, VisibleWrites)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.search.catalog import VisibleWrites
from services.search.coalesce import Coalescer
from services.search.write_locks import WriteLocks


async def _overlaps(locks: WriteLocks, first: list[str], second: list[str]) -> bool:
    """Whether a write of ``second`` starts while one of ``first`` holds its lock."""
    inside = asyncio.Event()
    release = asyncio.Event()
    started_during = False

    async def write_first() -> None:
        async with locks.hold(first):
            inside.set()
            await release.wait()

    async def write_second() -> None:
        nonlocal started_during
        await inside.wait()
        async with locks.hold(second):
            started_during = not release.is_set()

    task = asyncio.create_task(write_first())
    other = asyncio.create_task(write_second())
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(task, other)
    return started_during


@pytest.mark.parametrize(("exclusive", "first", "second", "overlap"), [
    (False, ["p1", "p2"], ["p3"], True),  # different products: both writes run at once
    (False, ["p1", "p2"], ["p2", "p9"], False),  # a shared product: the second waits
    (True, ["p1"], ["p3"], False),  # Milvus Lite: one write at a time
])
def test_writes_overlap_only_when_they_share_no_product_and_milvus_is_a_server(exclusive, first, second, overlap):
    assert asyncio.run(_overlaps(WriteLocks(exclusive), first, second)) is overlap


class _Recorder(Coalescer[str, str]):
    def __init__(self) -> None:
        super().__init__(limit=3)
        self.calls: list[list[str]] = []
        self.gate = threading.Event()

    def run(self, items: list[str]) -> list[str]:
        self.gate.wait(5)
        self.calls.append(items)
        if "bad" in items:
            raise RuntimeError("milvus said no")
        return [item.upper() for item in items]


def test_requests_arriving_together_share_one_call_each_getting_its_own_result():
    recorder = _Recorder()
    recorder.gate.set()

    async def main() -> list[str]:
        return await asyncio.gather(*(recorder.submit(x) for x in ["a", "b", "c", "d"]))

    assert asyncio.run(main()) == ["A", "B", "C", "D"]
    assert recorder.calls == [["a", "b", "c"], ["d"]]  # at most `limit` per call


def test_requests_arriving_during_a_call_go_together_in_the_next_and_an_error_reaches_only_its_batch():
    recorder = _Recorder()

    async def main() -> tuple:
        first = asyncio.create_task(recorder.submit("bad"))
        await asyncio.sleep(0.05)  # the first call now runs (blocked on the gate)
        later = [asyncio.create_task(recorder.submit(x)) for x in ["x", "y"]]
        await asyncio.sleep(0.05)
        recorder.gate.set()
        return await asyncio.gather(first, return_exceptions=True), await asyncio.gather(*later)

    (error,), later = asyncio.run(main())
    assert isinstance(error, RuntimeError)
    assert later == ["X", "Y"]
    assert recorder.calls == [["bad"], ["x", "y"]]


class _Store:
    def __init__(self) -> None:
        self.checks: list[dict[str, set[str]]] = []

    def wait_visible(self, expected: dict[str, set[str]]) -> None:
        self.checks.append(expected)


def test_visibility_checks_merge_calls_with_disjoint_products_and_separate_those_sharing_one():
    store = _Store()
    writes = VisibleWrites(store)

    async def main() -> None:
        await asyncio.gather(writes.submit({"p1": {"p1|a|0"}}), writes.submit({"p2": {"p2|a|0"}}),
                             writes.submit({"p1": {"p1|b|0"}}))

    asyncio.run(main())
    assert store.checks == [{"p1": {"p1|a|0"}, "p2": {"p2|a|0"}}, {"p1": {"p1|b|0"}}]
