"""Quick start (``make run``): start Triton + the search service (+ Milvus Lite), import the
demo catalog through the importer, run demo searches and print what was found.

The stack keeps running afterwards (``make stop`` stops it). Ports: Triton 8000-8002,
search service 50051, metrics 9464; Milvus Lite data in ./data/demo-catalog.db.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from services.api import pb, pb_grpc
from services.channels import PLAINTEXT, ClientSecurity
from services.importer import Importer, from_manifest, print_summary
from services.paths import BUILD, ROOT
from tools.sample_photos import encode, load_photos, reshoot, side_by_side
from tools.stack.certificates import CertificateAuthority
from tools.stack.demo_catalog import CATALOG
from tools.stack.local_stack import start_search_service

RUN = BUILD / "run"
DATA = ROOT / "data"
SEARCH_PID = RUN / "search.pid"
ADDRESS = "127.0.0.1:50051"


def write_demo_catalog(folder: Path) -> Path:
    """The demo photos as JPEG files plus a JSONL manifest (what a catalog team would have)."""
    photos = load_photos()
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for pid, (images, category, price, attributes, title) in CATALOG.items():
        for image_id, name in images:
            path = folder / f"{pid}-{image_id}.jpg"
            path.write_bytes(encode(photos[name].pixels))
            lines.append(json.dumps({"product_id": pid, "image_id": image_id, "image_path": path.name,
                                     "category": category, "price": price, "title": title,
                                     "attributes": attributes}))
    manifest = folder / "catalog.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def demo_pki(folder: Path) -> tuple[ClientSecurity, dict[str, str]]:
    """A throwaway CA, a server certificate and the demo client's certificate (--secure): the
    client's security options and the service's settings for mutual TLS with a policy."""
    ca = CertificateAuthority(folder, "visualsearch-demo-ca")
    server, client = ca.issue("localhost", server=True, file_stem="server"), ca.issue("demo-client")
    policy = folder / "policy.json"
    policy.write_text(json.dumps({"callers": [{"name": "demo-client", "certificate": "demo-client",
                                               "roles": ["search", "catalog.write", "catalog.read"]}]}))
    env = {"VS_TLS_CERT": str(server.cert), "VS_TLS_KEY": str(server.key), "VS_TLS_CLIENT_CA": str(ca.cert),
           "VS_AUTH_POLICY": str(policy)}
    return ClientSecurity(ca=str(ca.cert), cert=str(client.cert), key=str(client.key)), env


def start_demo_service(triton_url: str, security: ClientSecurity, env: dict[str, str]) -> None:
    process = start_search_service(ADDRESS, triton_url, os.environ.get("VS_MILVUS_URI", str(DATA / "demo-catalog.db")),
                                   RUN / "search.log", detach=True, security=security, **env)
    SEARCH_PID.write_text(str(process.pid))


def print_response(title: str, response: pb.SearchByImageResponse) -> None:
    print(f"\n== {title}" + ("  (nothing detected: whole image searched)" if response.whole_image_searched else ""))
    for group in response.objects:
        b = group.box
        print(f"  {group.label:<12} score {group.detection_score:.2f}  box ({b.x_min:.0f}, {b.y_min:.0f}, "
              f"{b.x_max:.0f}, {b.y_max:.0f})")
        for rank, match in enumerate(group.matches, start=1):
            print(f"      {rank}. {match.product_id:<11} {match.similarity:.3f}  {match.product.title} "
                  f"[{match.product.category}, {match.product.price:g}]")


def run_demo_searches(security: ClientSecurity) -> None:
    photos = load_photos()
    stub = pb_grpc.VisualSearchStub(security.channel(ADDRESS))
    queries = [
        ("re-shot coffee cup on another background", encode(reshoot(photos["coffee"], photos["flower"].pixels, 7),
                                                             quality=70), None),
        ("two catalog objects in one photo (cat + cup)",
         encode(side_by_side(photos["cat"].pixels, photos["coffee"].pixels)), None),
        ("same photo, only products under 25", encode(side_by_side(photos["cat"].pixels, photos["coffee"].pixels)),
         pb.Filter(max_price=25)),
    ]
    for title, image, flt in queries:
        response = stub.SearchByImage(pb.SearchByImageRequest(image=image, top_k=3, filter=flt), timeout=60)
        print_response(title, response)


def stop() -> None:
    if SEARCH_PID.exists():
        pid = int(SEARCH_PID.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            print(f"stopped search service (pid {pid})")
        except ProcessLookupError:
            pass
        SEARCH_PID.unlink()
    subprocess.run([sys.executable, "-m", "tools.stack.triton_launcher", "stop"], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stop", action="store_true", help="stop the stack started by a previous run")
    parser.add_argument("--secure", action="store_true",
                        help="mutual TLS and a role policy, with a throwaway CA in build/run/pki")
    args = parser.parse_args(argv)
    if args.stop:
        stop()
        return 0
    stop()  # a previous run's processes would hold the ports
    grpc_port = int(os.environ.get("VS_TRITON_GRPC_PORT", 8001))
    print("starting Triton (CPU model repository)...", flush=True)
    subprocess.run([sys.executable, "-m", "tools.stack.triton_launcher", "start"], cwd=ROOT, check=True)
    security, env = demo_pki(RUN / "pki") if args.secure else (PLAINTEXT, {})
    print("starting the search service (Milvus Lite" + (", mutual TLS" if args.secure else "") + ")...", flush=True)
    start_demo_service(f"127.0.0.1:{grpc_port}", security, env)
    print("importing the demo catalog...", flush=True)
    manifest = write_demo_catalog(DATA / "demo-photos")
    importer = Importer(ADDRESS, security=security)
    try:
        summary = importer.run(from_manifest(manifest))
    finally:
        importer.close()
    print_summary(summary)
    run_demo_searches(security)
    if args.secure:
        listing = f"grpcurl -cacert {security.ca} -cert {security.cert} -key {security.key} {ADDRESS} list"
    else:
        listing = f"grpcurl -plaintext {ADDRESS} list"
    print(f"\nThe stack is running: SearchByImage on {ADDRESS} (reflection on: {listing}),"
          f"\nmetrics on :9464/metrics, logs in {RUN}. Stop it with: make stop")
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    sys.exit(main())
