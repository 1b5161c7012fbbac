"""Bounded requests in flight, in total, per caller and for catalog writes: past a bound the
caller gets RESOURCE_EXHAUSTED at once, so one caller cannot take every slot, and import streams
(which may idle for VS_IMPORT_IDLE_TIMEOUT_S) can never take the slots searches need."""

from __future__ import annotations

from collections import Counter

from services.search import metrics
from services.search.errors import Overloaded


class Admission:
    def __init__(self, limit: int, per_caller: int, write_limit: int | None = None) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.write_limit = limit if write_limit is None else write_limit
        self.in_flight = 0
        self.writes = 0
        self.by_caller: Counter[str] = Counter()

    def enter(self, caller: str, write: bool = False) -> None:
        if self.in_flight >= self.limit:
            raise Overloaded(f"server is at its limit of {self.limit} requests in flight (VS_MAX_IN_FLIGHT); "
                             "retry with backoff")
        if write and self.writes >= self.write_limit:
            raise Overloaded(f"server is at its limit of {self.write_limit} catalog writes in flight "
                             "(VS_MAX_WRITES_IN_FLIGHT; the other slots are kept for searches); retry with backoff")
        if self.by_caller[caller] >= self.per_caller:
            raise Overloaded(f"caller {caller!r} is at its limit of {self.per_caller} requests in flight "
                             "(VS_MAX_IN_FLIGHT_PER_CALLER); retry with backoff")
        self.in_flight += 1
        self.writes += write
        self.by_caller[caller] += 1
        metrics.IN_FLIGHT.set(self.in_flight)

    def leave(self, caller: str, write: bool = False) -> None:
        self.in_flight -= 1
        self.writes -= write
        self.by_caller[caller] -= 1
        if not self.by_caller[caller]:
            del self.by_caller[caller]
        metrics.IN_FLIGHT.set(self.in_flight)
