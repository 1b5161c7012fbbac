"""The generated gRPC code for proto/visualsearch/v1 (``make proto`` writes it to build/gen).

Importing this module makes ``visualsearch.v1`` importable, generating it first when a
checkout has not run ``make proto`` yet.
"""

from __future__ import annotations

import sys

from services.paths import BUILD, ROOT

GEN = BUILD / "gen"
PROTO_DIR = ROOT / "proto"
PROTOSET = BUILD / "visualsearch.protoset"


def message_size_options(limit: int) -> list[tuple[str, int]]:
    """gRPC channel/server options raising both message limits: gRPC's 4 MiB default breaks
    real photos. Every server and client in the project uses these."""
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


# Client side (the server accepts VS_MAX_MESSAGE_BYTES, 64 MiB by default).
CLIENT_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = message_size_options(CLIENT_MESSAGE_BYTES)


def generate() -> None:
    from grpc_tools import protoc

    GEN.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    status = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={GEN}", f"--pyi_out={GEN}",
                          f"--grpc_python_out={GEN}", "--include_imports",
                          f"--descriptor_set_out={PROTOSET}", *sources])
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status}")


if str(GEN) not in sys.path:
    sys.path.insert(0, str(GEN))
try:
    from visualsearch.v1 import visual_search_pb2 as pb
    from visualsearch.v1 import visual_search_pb2_grpc as pb_grpc
except ImportError:
    generate()
    from visualsearch.v1 import visual_search_pb2 as pb
    from visualsearch.v1 import visual_search_pb2_grpc as pb_grpc

__all__ = ["CHANNEL_OPTIONS", "PROTOSET", "generate", "message_size_options", "pb", "pb_grpc"]
