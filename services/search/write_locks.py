"""Which catalog writes may run at the same time.

A product's rows are replaced by an upsert and then a delete of its stale keys; two writes of
the same product must not interleave those two steps, or the second write's delete could
remove the first's new rows. Writes of different products are independent on a Milvus
server, and letting them overlap pipelines pymilvus' row conversion (Python, holding the
GIL) with another write's round trip to Milvus. Milvus Lite wants one writer at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


class WriteLocks:
    def __init__(self, exclusive: bool) -> None:
        self.exclusive = exclusive  # one write at a time, whatever its products (Milvus Lite)
        self._busy: set[str] = set()
        self._writing = 0
        self._changed = asyncio.Condition()

    def _free(self, products: set[str]) -> bool:
        return not (self._writing if self.exclusive else self._busy & products)

    @asynccontextmanager
    async def hold(self, product_ids: Iterable[str]) -> AsyncIterator[None]:
        """Write these products once no other write holds any of them (or, when exclusive,
        once no other write runs)."""
        products = set(product_ids)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free(products))
            self._busy |= products
            self._writing += 1
        try:
            yield
        finally:
            async with self._changed:
                self._busy -= products
                self._writing -= 1
                self._changed.notify_all()
