"""Bounded requests in flight, in total and per caller: past a bound the caller gets
RESOURCE_EXHAUSTED at once, so one caller cannot take every slot."""

from __future__ import annotations

from collections import Counter

from services.search import metrics
from services.search.errors import Overloaded


class Admission:
    def __init__(self, limit: int, per_caller: int) -> None:
        self.limit = limit
        self.per_caller = per_caller
        self.in_flight = 0
        self.by_caller: Counter[str] = Counter()

    def enter(self, caller: str) -> None:
        if self.in_flight >= self.limit:
            raise Overloaded(f"server is at its limit of {self.limit} requests in flight (VS_MAX_IN_FLIGHT); "
                             "retry with backoff")
        if self.by_caller[caller] >= self.per_caller:
            raise Overloaded(f"caller {caller!r} is at its limit of {self.per_caller} requests in flight "
                             "(VS_MAX_IN_FLIGHT_PER_CALLER); retry with backoff")
        self.in_flight += 1
        self.by_caller[caller] += 1
        metrics.IN_FLIGHT.set(self.in_flight)

    def leave(self, caller: str) -> None:
        self.in_flight -= 1
        self.by_caller[caller] -= 1
        if not self.by_caller[caller]:
            del self.by_caller[caller]
        metrics.IN_FLIGHT.set(self.in_flight)
