"""The load generator's search call, reused across runs (each asyncio.run has its own loop)."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc

from services.api import pb, pb_grpc
from tools.loadtest import run as loadtest


class Answering(pb_grpc.VisualSearchServicer):
    def __init__(self) -> None:
        self.calls = 0

    def SearchByImage(self, request, context):  # noqa: N802 - the generated servicer's name
        self.calls += 1
        return pb.SearchByImageResponse()


def test_one_search_call_serves_several_runs_each_in_its_own_event_loop():
    servicer = Answering()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_VisualSearchServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        call = loadtest.search_call(f"127.0.0.1:{port}", pb.SearchByImageRequest(image=b"x"), 10)
        reports = [asyncio.run(loadtest.run(call, concurrency=2, count=3)) for _ in range(2)]
    finally:
        server.stop(None)
    assert servicer.calls == 6
    assert [[s.code for s in r.samples] for r in reports] == [["OK"] * 3] * 2
