"""A ghz-like load generator for SearchByImage (ghz cannot be installed here).

    python -m tools.loadtest.run --address 127.0.0.1:50051 --concurrency 8 --duration 30s \
        [--rps 20] [--image photo.jpg] [--json out.json] [--plots out_dir]

Drives the call at a fixed concurrency (closed loop) or at a fixed rate (open loop, with at
most --concurrency calls outstanding), for --count calls or --duration, and prints ghz's
summary: count, total, slowest, fastest, average, requests/sec, latency distribution,
status-code and error distribution. ``--json`` writes the same figures; ``--plots`` draws a
latency histogram and latency over time (PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from services.api import pb, pb_grpc
from services.channels import PLAINTEXT, ClientSecurity
from tools.loadtest import ghz
from tools.loadtest.report import Report, Sample, format_summary, plot


async def run(call: Callable[[], Awaitable[None]], concurrency: int, count: int | None = None,
              duration_s: float | None = None, rps: float | None = None, warmup: int = 0) -> Report:
    """Run ``call`` and time each invocation; ``call`` raises grpc.aio.AioRpcError on failure."""
    if count is None and duration_s is None:
        raise ValueError("give a count or a duration")
    for _ in range(warmup):
        try:
            await call()
        except grpc.aio.AioRpcError:
            pass
    report = Report()
    begin = time.perf_counter()
    issued = 0
    lock = asyncio.Lock()

    async def next_slot() -> float | None:
        nonlocal issued
        async with lock:
            if count is not None and issued >= count:
                return None
            if duration_s is not None and time.perf_counter() - begin >= duration_s:
                return None
            slot = begin + issued / rps if rps else 0.0
            issued += 1
        return slot

    async def worker() -> None:
        while (slot := await next_slot()) is not None:
            if rps:
                await asyncio.sleep(max(0.0, slot - time.perf_counter()))
            start = time.perf_counter()
            try:
                await call()
                code, error = "OK", ""
            except grpc.aio.AioRpcError as exc:
                code, error = exc.code().name, f"{exc.code().name}: {exc.details()}"
            report.samples.append(Sample(start - begin, time.perf_counter() - start, code, error))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    report.total_s = time.perf_counter() - begin
    return report


def search_call(address: str, request: pb.SearchByImageRequest, timeout_s: float,
                security: ClientSecurity = PLAINTEXT) -> Callable[[], Awaitable[None]]:
    stubs: dict[asyncio.AbstractEventLoop, pb_grpc.VisualSearchStub] = {}

    async def call() -> None:
        # an aio channel belongs to the loop that creates it: one per run's loop (a call reused
        # by a second asyncio.run would otherwise hit "Event loop is closed")
        loop = asyncio.get_running_loop()
        if loop not in stubs:
            stubs.clear()
            stubs[loop] = pb_grpc.VisualSearchStub(security.aio_channel(address))
        await stubs[loop].SearchByImage(request, timeout=timeout_s)

    return call


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 500ms, 30s, 2m)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60}[unit]


def default_image() -> bytes:
    from tools.sample_photos import encode, load_photos, reshoot

    photos = load_photos()
    return encode(reshoot(photos["coffee"], photos["flower"].pixels, seed=7), quality=80)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--image", type=Path, help="photo to send (default: a re-shot demo photo)")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("-c", "--concurrency", type=int, default=4)
    parser.add_argument("-n", "--count", type=int)
    parser.add_argument("-z", "--duration", type=parse_duration)
    parser.add_argument("--rps", type=float, help="open-loop rate; default: as fast as the concurrency allows")
    parser.add_argument("--warmup", type=int, default=4, help="calls made before measuring")
    parser.add_argument("--timeout", type=parse_duration, default=20.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path)
    parser.add_argument("--start-stack", type=Path, metavar="WORK_DIR",
                        help="start Triton + the service + Milvus Lite here, import the demo catalog, stop after")
    parser.add_argument("--write-payload", type=Path, metavar="FILE",
                        help="only write the serialized request (ghz --binary-file) and exit")
    parser.add_argument("--engine", choices=["auto", "ghz", "builtin"], default="auto",
                        help="ghz (the real one: $VS_GHZ, beside the checkout, or on PATH), the in-repo "
                             "generator, or ghz when it is found (default)")
    ClientSecurity.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.count is None and args.duration is None:
        args.count = 200
    image = args.image.read_bytes() if args.image else default_image()
    request = pb.SearchByImageRequest(image=image, top_k=args.top_k)
    if args.write_payload:
        args.write_payload.parent.mkdir(parents=True, exist_ok=True)
        args.write_payload.write_bytes(request.SerializeToString())
        print(f"wrote {args.write_payload} ({len(image)} image bytes)")
        return 0


    engine = args.engine if args.engine != "auto" else ("ghz" if ghz.find() else "builtin")
    print(f"load generator: {engine}" + (f" ({ghz.find()})" if engine == "ghz" else ""), file=sys.stderr)

    def drive(address: str) -> Report:
        security = ClientSecurity.from_args(args)
        if engine == "ghz":
            if args.warmup:
                ghz.run(address, request, 1, count=args.warmup, timeout_s=args.timeout, security=security)
            return ghz.run(address, request, args.concurrency, args.count, args.duration, args.rps, args.timeout,
                           security)

        async def go() -> Report:
            return await run(search_call(address, request, args.timeout, security),
                             args.concurrency, args.count, args.duration, args.rps, args.warmup)

        return asyncio.run(go())

    if args.start_stack:
        from services.importer import Importer
        from tools.sample_photos import load_photos
        from tools.stack.demo_catalog import import_requests
        from tools.stack.local_stack import local_stack

        with local_stack(args.start_stack) as stack:
            importer = Importer(stack.address)
            try:
                importer.stub.ImportProducts(iter(import_requests(load_photos())), timeout=600)
            finally:
                importer.close()
            report = drive(stack.address)
    else:
        report = drive(args.address)
    stats = report.summary()
    print(format_summary(stats))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=2))
    if args.plots:
        for path in plot(report, args.plots, f"SearchByImage c{args.concurrency}"):
            print(f"wrote {path}", file=sys.stderr)
    return 0 if stats["status_codes"].get("OK", 0) == stats["count"] else 1


if __name__ == "__main__":
    sys.exit(main())
