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
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from services import logging_setup
from services.api import message_size_options, pb, pb_grpc
from services.search import metrics, reflection, rpc
from services.search.admission import Admission
from services.search.auth import CATALOG_READ, CATALOG_WRITE, SEARCH, Guard
from services.search.backends import Backends
from services.search.catalog import Catalog
from services.search.collection import SchemaMismatch
from services.search.config import ConfigError, Settings
from services.search.milvus_store import MilvusStore
from services.search.search import Search
from services.search.tls import server_credentials
from services.search.triton_client import TritonClient

log = logging.getLogger("services.search.server")

SERVICE_NAMES = [pb.DESCRIPTOR.services_by_name[name].full_name for name in ("VisualSearch", "Catalog")]
# Health "service" that is SERVING while the process runs (Kubernetes liveness); "" and the
# API services follow the dependencies (readiness).
LIVENESS_SERVICE = "liveness"


def _remaining(context: grpc.aio.ServicerContext) -> Callable[[], float | None]:
    return context.time_remaining


def handler(method: str, role: str, audit: rpc.Audit | None = None) -> Callable:
    """The steps of ``rpc.py`` around a servicer method: identify and authorize the caller,
    admit the call, run it, turn a failure into its status, record metrics and (catalog
    writes) an audit line."""

    def wrap(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def run(self: VisualSearchServicer | CatalogServicer, request: Any,
                      context: grpc.aio.ServicerContext) -> Any:
            outcome = rpc.Outcome(method)
            try:
                caller = rpc.identify(self.guard, context, role, outcome)
                with rpc.admitted(self.admission, caller, write=role == CATALOG_WRITE):
                    outcome.response = await fn(self, request, context)
                return outcome.response
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError as exc:
                rpc.failed(outcome, exc)
                raise
            except Exception as exc:
                rpc.failed(outcome, exc)
                await context.abort(outcome.code, outcome.message)
            finally:
                rpc.record(outcome)
                if audit is not None:
                    log.info("audit", extra=rpc.audit_line(outcome, context.peer(), request, audit))

        return run

    return wrap


def _import_audit(_request: Any, response: pb.ImportProductsResponse | None) -> dict[str, Any]:
    if response is None:
        return {}
    return {"products": len({item.product_id for item in response.items}), "images": len(response.items),
            "products_imported": response.products_imported, "images_failed": response.images_failed,
            "vectors_written": response.vectors_written}


def _delete_audit(request: pb.DeleteProductsRequest, response: pb.DeleteProductsResponse | None) -> dict[str, Any]:
    return {"products": len(request.product_ids), "product_ids": list(request.product_ids)[:20],
            "vectors_deleted": response.vectors_deleted if response else None}


class VisualSearchServicer(pb_grpc.VisualSearchServicer):
    def __init__(self, search: Search, admission: Admission, guard: Guard) -> None:
        self.search = search
        self.admission = admission
        self.guard = guard

    @handler("SearchByImage", SEARCH)
    async def SearchByImage(self, request: pb.SearchByImageRequest, context: grpc.aio.ServicerContext
                            ) -> pb.SearchByImageResponse:
        return await self.search.search(request, _remaining(context))

    @handler("BatchSearchByImage", SEARCH)
    async def BatchSearchByImage(self, request: pb.BatchSearchByImageRequest, context: grpc.aio.ServicerContext
                                 ) -> pb.BatchSearchByImageResponse:
        return await self.search.batch_search(request, _remaining(context))


class CatalogServicer(pb_grpc.CatalogServicer):
    def __init__(self, catalog: Catalog, admission: Admission, guard: Guard) -> None:
        self.catalog = catalog
        self.admission = admission
        self.guard = guard

    @handler("ImportProducts", CATALOG_WRITE, _import_audit)
    async def ImportProducts(self, request_iterator: Any, context: grpc.aio.ServicerContext
                             ) -> pb.ImportProductsResponse:
        return await self.catalog.import_products(request_iterator, _remaining(context))

    @handler("DeleteProducts", CATALOG_WRITE, _delete_audit)
    async def DeleteProducts(self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
                             ) -> pb.DeleteProductsResponse:
        return await self.catalog.delete_products(request)

    @handler("GetCatalogStats", CATALOG_READ)
    async def GetCatalogStats(self, request: pb.GetCatalogStatsRequest, context: grpc.aio.ServicerContext
                              ) -> pb.CatalogStats:
        return await self.catalog.stats()


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits, keepalive enforcement and a connection age."""
    import_grace_ms = int(settings.import_max_duration_s * 1000) + 60_000
    return [
        *message_size_options(settings.max_message_bytes),
        # Close connections after an age (with a grace longer than the longest import), so
        # clients that balance per connection re-resolve DNS and reach pods added later.
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", import_grace_ms),
        ("grpc.max_connection_idle_ms", 300_000),
        # Find dead peers; refuse clients that ping more often than every 10 s (GOAWAY after 2).
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class SearchServer:
    """Owns the grpc.aio server, the backends and the health loop."""

    def __init__(self, settings: Settings, backends: Backends | None = None) -> None:
        """``backends`` are the real Triton client and Milvus store unless given (tests)."""
        self.settings = settings
        self.server = grpc.aio.server(options=server_options(settings))
        self.backends = backends or Backends(TritonClient.from_settings(settings), MilvusStore(settings))
        self.admission = Admission(settings.max_in_flight,
                                   min(settings.max_in_flight_per_caller, settings.max_in_flight),
                                   settings.max_writes_in_flight)
        self.guard = Guard(settings.auth_policy, settings.allow_plaintext_tokens)
        self.health = health.aio.HealthServicer()
        self.serving = False
        self.stopping = False
        self._health_task: asyncio.Task | None = None
        pb_grpc.add_VisualSearchServicer_to_server(
            VisualSearchServicer(Search(settings, self.backends), self.admission, self.guard), self.server)
        pb_grpc.add_CatalogServicer_to_server(
            CatalogServicer(Catalog(settings, self.backends), self.admission, self.guard), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        advertised = {"on": SERVICE_NAMES, "search": SERVICE_NAMES[:1], "off": []}[settings.reflection]
        if advertised:
            reflection.enable(self.server, [*advertised, health.SERVICE_NAME, reflection.SERVICE_NAME], SERVICE_NAMES)
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = self.server.add_insecure_port(settings.listen)
        else:  # TLS only: a plaintext client fails its handshake
            self.port = self.server.add_secure_port(settings.listen, credentials)
        if self.port == 0:
            raise ConfigError(f"VS_LISTEN={settings.listen!r}: cannot bind")
        self.token_port: int | None = None
        if settings.token_listen:  # TLS without client certificates: token callers beside certificate ones
            self.token_port = self.server.add_secure_port(settings.token_listen, server_credentials(settings, False))
            if self.token_port == 0:
                raise ConfigError(f"VS_TOKEN_LISTEN={settings.token_listen!r}: cannot bind")
        self.health_server: grpc.aio.Server | None = None
        if settings.health_listen:
            self.health_server = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            if self.health_server.add_insecure_port(settings.health_listen) == 0:
                raise ConfigError(f"VS_HEALTH_LISTEN={settings.health_listen!r}: cannot bind")

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
            # Not serving: probe every second, so a returning dependency is back in rotation at once.
            await asyncio.sleep(self.settings.health_interval_s if self.serving
                                else min(1.0, self.settings.health_interval_s))
            if not self.stopping:
                await self.check_dependencies()

    async def start(self) -> None:
        if self.settings.allow_plaintext_tokens and not self.settings.tls:
            log.warning("VS_ALLOW_PLAINTEXT_TOKENS: bearer tokens are accepted WITHOUT TLS on this port; safe only "
                        "where a service mesh terminates TLS in front of the pod",
                        extra={"address": self.settings.listen})
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._set_health(False)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        log.info("listening", extra={"address": self.settings.listen, "port": self.port, "tls": self.settings.tls,
                                     "mutual_tls": bool(self.settings.tls_client_ca),
                                     "authorization": bool(self.settings.auth_policy),
                                     "token_port": self.token_port,
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
        if self.health_server is not None:
            await self.health_server.stop(0)
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
