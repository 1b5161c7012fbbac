"""The steps every RPC goes through, each small and unit-tested on its own; ``server.handler``
chains them: who is calling and may they call this method, admission, the status a failure
becomes, the request metrics and, for catalog writes, the audit line."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from services.search import metrics
from services.search.admission import Admission
from services.search.auth import Caller, Guard
from services.search.errors import ServiceError

log = logging.getLogger("services.search.server")

Audit = Callable[[Any, Any], dict[str, Any]]  # (request, response or None) -> what the audit line records


@dataclass
class Outcome:
    """What one RPC came to, filled in as it runs."""

    method: str
    start: float = field(default_factory=time.perf_counter)
    caller: Caller | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    response: Any = None

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def identify(guard: Guard, context: grpc.aio.ServicerContext, role: str, outcome: Outcome) -> Caller:
    """The caller, allowed ``role`` (UNAUTHENTICATED / PERMISSION_DENIED otherwise)."""
    outcome.caller = guard.caller(context)
    guard.authorize(outcome.caller, role, outcome.method)
    return outcome.caller


@contextmanager
def admitted(admission: Admission, caller: Caller, write: bool = False) -> Iterator[None]:
    """One in-flight slot for the call, a write slot too for a catalog write (RESOURCE_EXHAUSTED
    when none is free)."""
    admission.enter(caller.name, write)
    try:
        yield
    finally:
        admission.leave(caller.name, write)


def failed(outcome: Outcome, exc: BaseException) -> None:
    """Record the status a failure becomes, logging what an operator should see (bad input is
    the caller's business; anything unexpected is logged with its traceback)."""
    if isinstance(exc, ServiceError):
        outcome.code, outcome.message, outcome.response = exc.code, str(exc), exc.partial
        if exc.code != grpc.StatusCode.INVALID_ARGUMENT:
            log.warning("request failed", extra={"method": outcome.method, "code": exc.code.name,
                                                 "error": outcome.message,
                                                 "caller": outcome.caller.name if outcome.caller else None})
    elif isinstance(exc, asyncio.CancelledError):
        outcome.code = grpc.StatusCode.CANCELLED
    else:
        outcome.code, outcome.message = grpc.StatusCode.INTERNAL, "internal error; see the server log"
        log.error("unexpected error", extra={"method": outcome.method}, exc_info=exc)


def record(outcome: Outcome) -> None:
    """The request counter and latency histogram, by method and status."""
    metrics.REQUESTS.labels(outcome.method, outcome.code.name).inc()
    metrics.REQUEST_SECONDS.labels(outcome.method, outcome.code.name).observe(outcome.seconds)


def audit_line(outcome: Outcome, peer: str, request: Any, audit: Audit) -> dict[str, Any]:
    """The fields of a catalog write's audit line."""
    caller = outcome.caller
    return {"audit": True, "method": outcome.method, "code": outcome.code.name,
            "caller": caller.name if caller else None, "credential": caller.how if caller else None,
            "peer": peer, "error": outcome.message or None, "seconds": round(outcome.seconds, 3),
            **audit(request, outcome.response)}
