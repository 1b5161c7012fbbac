"""The search service process: gRPC (grpc.aio) servicers, health, reflection, metrics, shutdown.

Run: ``python -m services.search.server`` (settings from VS_* environment variables).
Every RPC enters through a servicer method below, which hands it to ``Search``
(search.py) or ``Catalog`` (catalog.py); those call Triton through ``triton_client.py``
and Milvus through ``milvus_store.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from services import logging_setup
from services.api import message_size_options, pb, pb_grpc
from services.search import metrics, reflection
from services.search.backends import Backends
from services.search.catalog import Catalog
from services.search.config import ConfigError, Settings
from services.search.errors import ServiceError
from services.search.milvus_store import MilvusStore, SchemaMismatch
from services.search.search import Search
from services.search.triton_client import TritonClient

log = logging.getLogger("services.search.server")

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[name].full_name for name in ("VisualSearch", "Catalog")]
# Health "service" that is SERVING while the process runs (Kubernetes liveness); "" and the
# API services follow the dependencies (readiness).
LIVENESS_SERVICE = "liveness"


class Admission:
    """Bounded requests in flight; past the bound callers get RESOURCE_EXHAUSTED at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        metrics.IN_FLIGHT.set(self.in_flight)


def _remaining(context: grpc.aio.ServicerContext) -> Callable[[], float | None]:
    return context.time_remaining


def handler(method: str) -> Callable:
    """Admission control, error-to-status mapping, metrics, and a log line when an RPC fails."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def run(self: VisualSearchServicer | CatalogServicer, request: Any,
                      context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            if not self.admission.try_enter():
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                metrics.REQUESTS.labels(method, code.name).inc()
                await context.abort(code, f"server is at its limit of {self.admission.limit} requests in flight "
                                          "(VS_MAX_IN_FLIGHT); retry with backoff")
            try:
                return await fn(self, request, context)
            except ServiceError as exc:
                code = exc.code
                if code != grpc.StatusCode.INVALID_ARGUMENT:
                    log.warning("request failed", extra={"method": method, "code": code.name, "error": str(exc)})
                await context.abort(code, str(exc))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error", extra={"method": method})
                await context.abort(code, "internal error; see the server log")
            finally:
                self.admission.leave()
                elapsed = time.perf_counter() - start
                metrics.REQUESTS.labels(method, code.name).inc()
                metrics.REQUEST_SECONDS.labels(method, code.name).observe(elapsed)

        return run

    return wrap


class VisualSearchServicer(pb_grpc.VisualSearchServicer):
    def __init__(self, search: Search, admission: Admission) -> None:
        self.search = search
        self.admission = admission

    @handler("SearchByImage")
    async def SearchByImage(self, request: pb.SearchByImageRequest, context: grpc.aio.ServicerContext
                            ) -> pb.SearchByImageResponse:
        return await self.search.search(request, _remaining(context))

    @handler("BatchSearchByImage")
    async def BatchSearchByImage(self, request: pb.BatchSearchByImageRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.BatchSearchByImageResponse:
        return await self.search.batch_search(request, _remaining(context))


class CatalogServicer(pb_grpc.CatalogServicer):
    def __init__(self, catalog: Catalog, admission: Admission) -> None:
        self.catalog = catalog
        self.admission = admission

    @handler("ImportProducts")
    async def ImportProducts(self, request_iterator: Any, context: grpc.aio.ServicerContext
                             ) -> pb.ImportProductsResponse:
        return await self.catalog.import_products(request_iterator, _remaining(context))

    @handler("DeleteProducts")
    async def DeleteProducts(self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
                             ) -> pb.DeleteProductsResponse:
        return await self.catalog.delete_products(request)

    @handler("GetCatalogStats")
    async def GetCatalogStats(self, request: pb.GetCatalogStatsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.CatalogStats:
        return await self.catalog.stats()


class SearchServer:
    """Owns the grpc.aio server, the backends and the health loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = grpc.aio.server(options=message_size_options(settings.max_message_bytes))
        self.backends = Backends(
            TritonClient(settings.triton_url, settings.max_message_bytes, settings.triton_timeout_s),
            MilvusStore(settings))
        self.admission = Admission(settings.max_in_flight)
        self.health = health.aio.HealthServicer()
        self.serving = False
        self.stopping = False
        self._health_task: asyncio.Task | None = None
        pb_grpc.add_VisualSearchServicer_to_server(
            VisualSearchServicer(Search(settings, self.backends), self.admission), self.server)
        pb_grpc.add_CatalogServicer_to_server(CatalogServicer(Catalog(settings, self.backends), self.admission),
                                              self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, [*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME])
        self.port = self.server.add_insecure_port(settings.listen)
        if self.port == 0:
            raise ConfigError(f"VS_LISTEN={settings.listen!r}: cannot bind")

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)
        if serving != self.serving:
            log.info("health changed", extra={"serving": serving})
        self.serving = serving

    async def check_dependencies(self) -> bool:
        try:
            problems = await self.backends.probe()
        except SchemaMismatch as exc:
            problems = {"triton": None, "milvus": str(exc)}
        for name, problem in problems.items():
            metrics.DEPENDENCY_UP.labels(name).set(0 if problem else 1)
            if problem:
                log.warning("dependency not usable", extra={"dependency": name, "problem": problem})
        ok = not any(problems.values())
        if not self.stopping:
            await self._set_health(ok)
        return ok

    async def _health_loop(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.settings.health_interval_s)
            if not self.stopping:
                await self.check_dependencies()

    async def start(self) -> None:
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_health(False)
        await self.server.start()
        log.info("listening", extra={"address": self.settings.listen, "port": self.port,
                                     "triton": self.settings.triton_url, "milvus": self.settings.milvus_uri})
        await self.check_dependencies()
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        """Graceful: NOT_SERVING first (load balancers drain), then let in-flight calls finish."""
        self.stopping = True
        await self._set_health(False)
        if self._health_task:
            self._health_task.cancel()
        log.info("draining", extra={"grace_s": self.settings.shutdown_grace_s, "in_flight": self.admission.in_flight})
        await self.server.stop(self.settings.shutdown_grace_s)
        await self.backends.close()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    server = SearchServer(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.listen.rpartition(":")[0] or "0.0.0.0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        logging_setup.configure("INFO")
        log.error("bad configuration: %s", exc)
        return 2
    logging_setup.configure(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
